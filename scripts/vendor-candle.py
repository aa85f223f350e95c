#!/usr/bin/env python3
"""Rebuilds vendor/candle-core from the crates.io source in ~/.cargo/registry and applies activepref's patch
(vendor/README.md): gradients accumulate without starting from zeros, a matmul's frozen operand gets none, and the
default thread count is computed once. Usage: scripts/vendor-candle.py [VERSION]"""
import glob, os, re, shutil, sys

version = sys.argv[1] if len(sys.argv) > 1 else "0.11.1"
srcs = glob.glob(os.path.expanduser(f"~/.cargo/registry/src/*/candle-core-{version}"))
if not srcs:
    sys.exit(f"candle-core {version} is not in ~/.cargo/registry: run `cargo fetch` with that version first")
src, dst = srcs[0], os.path.join(os.path.dirname(__file__), "..", "vendor", "candle-core")
shutil.rmtree(dst, ignore_errors=True)
os.makedirs(dst)
shutil.copytree(os.path.join(src, "src"), os.path.join(dst, "src"))
for f in os.listdir(src):
    if f.startswith("LICENSE") or f == "README.md":
        shutil.copy(os.path.join(src, f), dst)

# Cargo.toml without the examples, tests and benches, which are not copied.
out, skip = [], False
for line in open(os.path.join(src, "Cargo.toml")).read().splitlines():
    if re.match(r"^\[\[(example|test|bench)\]\]", line):
        skip = True
        continue
    if skip and line.startswith("["):
        skip = False
    if not skip:
        out.append(line)
open(os.path.join(dst, "Cargo.toml"), "w").write("\n".join(out) + "\n")

# `let g = grads.or_insert(x)?; ... *g = g.add(EXPR)?;` → `... grads.accumulate(x, EXPR)?;`
path = os.path.join(dst, "src", "backprop.rs")
lines, out, i, n = open(path).read().split("\n"), [], 0, 0
while i < len(lines):
    m = re.match(r"^(\s*)let (\w+) = grads\.or_insert\((\w+)\)\?;\s*$", lines[i])
    if m:
        _, g, x = m.groups()
        found, j = None, i + 1
        while j < len(lines) and j < i + 14:
            m2 = re.match(r"^(\s*)\*" + g + r" = " + g + r"\.add\((.*)\)\?(;?)\s*$", lines[j])
            if m2:
                found = m2
                break
            if re.search(r"\b" + g + r"\b", lines[j]) or re.match(r"^\s*\}", lines[j]):
                break
            j += 1
        if found:
            expr = found.group(2).replace(f"{g}.dims()", f"{x}.dims()")
            out.extend(lines[i + 1 : j])
            out.append(f"{found.group(1)}grads.accumulate({x}, {expr})?{found.group(3)}")
            n, i = n + 1, j + 1
            continue
    out.append(lines[i])
    i += 1
text = "\n".join(out)
anchor = "    fn or_insert(&mut self, tensor: &Tensor) -> Result<&mut Tensor> {"
assert anchor in text, "GradStore::or_insert not found: the patch needs updating for this release"
text = text.replace(anchor, '''    /// Adds `grad` to the gradient of `tensor`, or makes it that gradient when it is the first.
    ///
    /// activepref's patch (vendor/README.md): upstream starts every gradient as `zeros_like` and adds each
    /// contribution to it, an allocation, a memset and an element-wise pass per graph node that change nothing
    /// but the sign of a zero. A non-contiguous first contribution is copied, as the addition did, so every
    /// stored gradient stays contiguous.
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().add(grad)?;
                entry.insert(sum);
            }
            Entry::Vacant(entry) => {
                entry.insert(if grad.is_contiguous() { grad.clone() } else { grad.contiguous()? });
            }
        }
        Ok(())
    }

''' + anchor)
# The matmul's backward computes an operand's gradient only when that operand is in the graph.
matmul = """                        let lhs_grad = grad.matmul(&rhs.t()?)?;
                        grads.accumulate(lhs, &lhs_grad)?;

                        let rhs_grad = lhs.t()?.matmul(&grad)?;
                        grads.accumulate(rhs, &rhs_grad)?;"""
assert matmul in text, "the matmul backward not found: the patch needs updating for this release"
text = text.replace(matmul, """                        // activepref's patch (vendor/README.md): an operand outside the graph (a frozen
                        // weight) gets no gradient, so its product is not computed.
                        if lhs.track_op() {
                            let lhs_grad = grad.matmul(&rhs.t()?)?;
                            grads.accumulate(lhs, &lhs_grad)?;
                        }
                        if rhs.track_op() {
                            let rhs_grad = lhs.t()?.matmul(&grad)?;
                            grads.accumulate(rhs, &rhs_grad)?;
                        }""")
open(path, "w").write(text)

# The thread count's fallback is computed once: upstream reads /proc/cpuinfo (num_cpus::get_physical) on every
# call, and every matrix product asks for it.
path = os.path.join(dst, "src", "utils.rs")
text = open(path).read()
anchor = """fn default_num_threads() -> usize {
    let physical = {"""
assert anchor in text, "utils::default_num_threads not found: the patch needs updating for this release"
text = text.replace(anchor, """fn default_num_threads() -> usize {
    // activepref's patch (vendor/README.md): computed once. Upstream reads /proc/cpuinfo here on every call,
    // and every matrix product calls it (8,530 reads in a 10-second `bench dpo`).
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(default_num_threads_uncached)
}

fn default_num_threads_uncached() -> usize {
    let physical = {""")
open(path, "w").write(text)
print(f"vendor/candle-core: candle-core {version}, {n} accumulation sites patched, matmul backward skips frozen "
      "operands, the default thread count computed once")
