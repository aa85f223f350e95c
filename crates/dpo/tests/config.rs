//! The loss options TRL 0.27.2 names (`f_divergence_type`, `f_alpha_divergence_coef`, `use_weighting`,
//! `ld_alpha`, `rpo_alpha`, and the `aot`/`aot_pair` losses) read from a TOML config under those names, and
//! bad values refused with the key and the value in the message.

use dpo::loss::{FDivergence, LossType};
use dpo::TrainConfig;

fn parse(body: &str) -> anyhow::Result<TrainConfig> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.toml");
    std::fs::write(&p, body).unwrap();
    let cfg = TrainConfig::from_toml_file(&p)?;
    cfg.validate()?;
    Ok(cfg)
}

#[test]
fn trl_option_names_are_accepted() {
    let cfg = parse(
        r#"
loss_type = ["aot", "aot_pair", "sigmoid"]
[loss]
beta = 0.2
f_divergence_type = "alpha_divergence"
f_alpha_divergence_coef = 0.5
use_weighting = true
ld_alpha = 0.5
rpo_alpha = 1.0
"#,
    );
    // aot and aot_pair ignore the f-divergence: refused (see below); the same keys with sigmoid alone are fine.
    assert!(cfg.unwrap_err().to_string().contains("f_divergence_type"));
    let cfg = parse(
        r#"
loss_type = ["sigmoid", "aot", "aot_pair"]
[loss]
use_weighting = true
ld_alpha = 0.5
rpo_alpha = 1.0
"#,
    )
    .unwrap();
    assert_eq!(cfg.loss_type, vec![LossType::Sigmoid, LossType::Aot, LossType::AotPair]);
    assert!(cfg.loss.use_weighting);
    assert_eq!((cfg.loss.ld_alpha, cfg.loss.rpo_alpha), (Some(0.5), Some(1.0)));
    let cfg =
        parse("loss_type = [\"ipo\"]\n[loss]\nf_divergence_type = \"js_divergence\"\nf_alpha_divergence_coef = 0.3\n")
            .unwrap();
    assert_eq!(cfg.loss.f_divergence_type, FDivergence::JsDivergence);
    assert_eq!(cfg.loss.f_alpha_divergence_coef, 0.3);
    // Defaults are TRL's: reverse KL, α = 1, no weighting, no LD, no RPO.
    let d = TrainConfig::default().loss;
    assert_eq!(d.f_divergence_type, FDivergence::ReverseKl);
    assert_eq!((d.f_alpha_divergence_coef, d.use_weighting, d.ld_alpha, d.rpo_alpha), (1.0, false, None, None));
}

#[test]
fn bad_values_name_the_key_and_the_value() {
    for (body, want) in [
        ("[loss]\nld_alpha = 1.5\n", &["loss.ld_alpha", "1.5"][..]),
        ("[loss]\nld_alpha = -0.1\n", &["loss.ld_alpha", "-0.1"]),
        ("[loss]\nrpo_alpha = -1.0\n", &["loss.rpo_alpha", "-1"]),
        (
            "[loss]\nf_divergence_type = \"alpha_divergence\"\nf_alpha_divergence_coef = 0.0\n",
            &["f_alpha_divergence_coef", "0"],
        ),
        (
            "loss_type = [\"discopop\"]\n[loss]\nf_divergence_type = \"js_divergence\"\n",
            &["f_divergence_type", "js_divergence", "discopop"],
        ),
        ("[loss]\nlabel_smoothing = 1.5\n", &["loss.label_smoothing", "1.5"]),
        ("[loss]\nbeta = 0.0\n", &["loss.beta", "0"]),
        ("[loss]\nf_divergence_type = \"kl\"\n", &["f_divergence_type", "kl", "reverse_kl"]),
        ("loss_type = [\"aot_unpaired\"]\n", &["aot_unpaired", "aot_pair"]),
    ] {
        let e = format!("{:#}", parse(body).unwrap_err());
        for w in want {
            assert!(e.contains(w), "{body:?}: {e:?} should mention {w:?}");
        }
    }
}
