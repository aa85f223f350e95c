//! `y = x Wᵀ` on the CPU for a weight stored `(out, in)`, with the output features split across threads.
//!
//! Why not candle's `matmul`: it hands the product to `gemm` as one call parallelised inside. With `W` stored
//! `(out, in)` gemm must repack `W` into its panel layout on every call, and for the shapes of this project (few
//! rows of `x` — a decoding batch, a training micro-batch — against many output features) it either packs all of
//! `W` on the calling thread before the workers start, or lets every worker pack all of it, since it divides the
//! work by rows of `x`. A profile of the default job's sampling put a sixth of the time in that packing.
//! Here each thread takes its own block of `W`'s rows and runs a single-threaded gemm on it: every weight is
//! read from memory and packed once, by one thread, with one synchronisation per product.
//!
//! For few rows (a decoding batch) even one packing of `W` costs more than the product: gemm's micro-kernel
//! runs along the output's contiguous dimension, and with `y` row-major that is the output features, so every
//! panel of `W` is gathered across its rows first. [`x_wt_into`] then has gemm write `yᵀ` instead, which makes
//! the small `x` the packed operand and reads `W` where it lies, and transposes the block into `y`. Same sums in
//! the same order, so the same bits; 1.5–3× faster at 8–64 rows on SmolLM2's shapes (docs/benchmarks.md).

use super::Float;
use rayon::prelude::*;

/// Below this many multiply-adds one thread does the whole product (gemm's own threading threshold).
const PAR_MIN_WORK: usize = 48 * 48 * 256;

/// Up to this many rows, `x Wᵀ` is computed as `yᵀ` (see the module doc): measured faster up to 128 rows on
/// SmolLM2-135M's projections, slower from 256.
const TRANSPOSED_MAX_ROWS: usize = 128;
/// A vocabulary-sized `W` (more output features than this) goes through the transposed path up to
/// [`WIDE_MAX_ROWS`] rows, in blocks of [`WIDE_BLOCK`] features handed out to threads as they come free, so
/// each block's `yᵀ` stays in cache until it is transposed. SmolLM2's head, 32 rows: 20.4 ms row-major, 18.3
/// ms in two transposed blocks, 13.0 ms in 1,024-wide ones; 64 rows (the fused head's chunk): 29.7 → 22.1 ms;
/// 256 rows: level; 512: row-major ahead.
const WIDE: usize = 8192;
const WIDE_MAX_ROWS: usize = 256;
const WIDE_BLOCK: usize = 1024;

/// Output features per block are a multiple of this (one AVX-512 f32 vector). Not gemm's micro-kernel height
/// (64): at that alignment SmolLM2's 576 outputs split 320 / 256 between two threads, and the idle quarter cost
/// more than the partial panels of a 288 / 288 split (576 → 576 at 256 rows: 0.90 → 0.80 ms).
const ALIGN: usize = 16;

/// `y (rows × out) = x (rows × inp) · Wᵀ`, `w` holding `W` row-major `(out, inp)`.
pub(crate) fn x_wt<T: Float>(x: &[T], rows: usize, inp: usize, w: &[T], out: usize) -> Vec<T> {
    x_wt_plus(x, rows, inp, w, out, None)
}

/// [`x_wt`] into `y`, which it overwrites.
pub(crate) fn x_wt_into<T: Float>(y: &mut [T], x: &[T], rows: usize, inp: usize, w: &[T], out: usize) {
    assert_eq!(y.len(), rows * out, "y holds {} elements, not {rows} × {out}", y.len());
    // SAFETY: `y` holds rows × out elements.
    unsafe { x_wt_raw(y.as_mut_ptr(), x, rows, inp, w, out, None) }
}

/// [`x_wt`], plus `extra` (its `B` `(k, out)`) added to each block of `y` by the thread that computed it.
pub(crate) fn x_wt_plus<T: Float>(
    x: &[T],
    rows: usize,
    inp: usize,
    w: &[T],
    out: usize,
    extra: Option<Extra<T>>,
) -> Vec<T> {
    // SAFETY: x_wt_raw writes every element of its rows × out destination.
    unsafe { written(rows * out, |y| x_wt_raw(y, x, rows, inp, w, out, extra)) }
}

/// # Safety
/// `y` is valid for writes of `rows × out` elements.
unsafe fn x_wt_raw<T: Float>(
    y: *mut T,
    x: &[T],
    rows: usize,
    inp: usize,
    w: &[T],
    out: usize,
    extra: Option<Extra<T>>,
) {
    assert_eq!(w.len(), out * inp, "x_wt: w holds {} elements, not {out} × {inp}", w.len());
    // Wᵀ as an (inp × out) operand: element (k, j) is w[j·inp + k].
    let transposed = rows > 1 && rows <= if out > WIDE { WIDE_MAX_ROWS } else { TRANSPOSED_MAX_ROWS };
    split_gemm(y, x, rows, inp, w, (1, inp), out, transposed, extra);
}

/// A vector of `len` elements, all written by `fill` through the pointer it is given. `vec![0; len]` would
/// write them once more first: a pass over every product's output (~1.5% of a forward pass), and for a large
/// one the page faults of memory that gemm then writes anyway.
///
/// # Safety
/// `fill` writes all `len` elements and reads none before writing it (gemm with its destination's
/// coefficient zero: it does not read the destination).
unsafe fn written<T>(len: usize, fill: impl FnOnce(*mut T)) -> Vec<T> {
    let mut y = Vec::with_capacity(len);
    fill(y.as_mut_ptr());
    // SAFETY: `fill` wrote all `len` elements (the contract above).
    unsafe { y.set_len(len) };
    y
}

/// Whether `x Wᵀ` for `rows` rows runs faster from a copy of `W` stored transposed, `(inp, out)`: in the
/// row-major regime (more than [`TRANSPOSED_MAX_ROWS`] rows) gemm gathers each block of `W`'s rows into its
/// panel layout, and for a weight with more inputs than outputs (a down-projection) that gather is slow:
/// SmolLM2's 1,536 → 576 at 256 rows, 2.77 ms from `W`, 2.01 ms from `Wᵀ` (0.80 → 0.76 ms for 576 → 576,
/// not worth a copy). The caller decides whether a frozen weight's copy is worth its memory.
pub(crate) fn prefers_transposed_weight(rows: usize, inp: usize, out: usize) -> bool {
    rows > TRANSPOSED_MAX_ROWS && inp > out
}

/// `y (rows × out) = x (rows × inp) · Wt (+ extra)`, `wt` holding `Wᵀ` row-major `(inp, out)`: [`x_wt_plus`]
/// from the transposed copy of [`prefers_transposed_weight`].
pub(crate) fn x_wtt_plus<T: Float>(
    x: &[T],
    rows: usize,
    inp: usize,
    wt: &[T],
    out: usize,
    extra: Option<Extra<T>>,
) -> Vec<T> {
    assert_eq!(wt.len(), out * inp, "x_wtt: wt holds {} elements, not {inp} × {out}", wt.len());
    // SAFETY: split_gemm writes every element of its rows × out destination.
    unsafe { written(rows * out, |y| split_gemm(y, x, rows, inp, wt, (out, 1), out, false, extra)) }
}

/// `y (rows × inp) = g (rows × out) · W`, `w` holding `W` row-major `(out, inp)`: the input's gradient of
/// `x Wᵀ`, split the same way (each thread a block of `W`'s columns).
pub(crate) fn x_w<T: Float>(g: &[T], rows: usize, out: usize, w: &[T], inp: usize) -> Vec<T> {
    x_w_plus(g, rows, out, w, inp, None)
}

/// [`x_w`], plus `extra` (its `B` `(k, inp)`).
pub(crate) fn x_w_plus<T: Float>(
    g: &[T],
    rows: usize,
    out: usize,
    w: &[T],
    inp: usize,
    extra: Option<Extra<T>>,
) -> Vec<T> {
    assert_eq!(w.len(), out * inp, "x_w: w holds {} elements, not {out} × {inp}", w.len());
    // SAFETY: split_gemm writes every element of its rows × inp destination.
    unsafe { written(rows * inp, |y| split_gemm(y, g, rows, out, w, (inp, 1), inp, false, extra)) }
}

/// A second, low-rank product added to a split product's result: `y += scale · a · B`, `a` `(rows × k)`
/// row-major, `B`'s element `(i, j)` at `b[i·b_rs + j·b_cs]`. Each thread adds it to its own block of `y`
/// while that block is still in its cache: a LoRA adapter's term without a pass of its own over `y`.
#[derive(Clone, Copy)]
pub(crate) struct Extra<'a, T> {
    pub a: &'a [T],
    pub k: usize,
    pub b: &'a [T],
    pub b_strides: (usize, usize),
    pub scale: T,
}

/// Which dimension of the result [`par_gemm`] splits across threads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Split {
    Rows,
    Cols,
}

/// An operand's element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Strided<'a, T> {
    /// Row-major `(rows, cols)`.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }
    /// The transpose of row-major `(rows, cols)` data: a `(cols, rows)` operand.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }
    fn reaches(&self, m: usize, n: usize) -> bool {
        m == 0 || n == 0 || self.data.len() > (m - 1) * self.rs + (n - 1) * self.cs
    }
}

/// `y (m × n, row-major) = scale · lhs (m × k) · rhs (k × n)`, split across threads by rows or columns of `y`:
/// the small products of a low-rank adapter (one side of rank `r`), which gemm's own threading splits badly.
pub(crate) fn par_gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    lhs: Strided<T>,
    rhs: Strided<T>,
    scale: T,
    split: Split,
) -> Vec<T> {
    assert!(lhs.reaches(m, k) && rhs.reaches(k, n), "par_gemm: an operand is smaller than {m} × {k} × {n}");
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let mut y: Vec<T> = Vec::with_capacity(m * n);
    let threads = candle_core::utils::get_num_threads().max(1);
    let len = if split == Split::Rows { m } else { n };
    let blocks = if m * n * k < PAR_MIN_WORK { 1 } else { threads };
    let per = len.div_ceil(blocks).next_multiple_of(ALIGN).min(len);
    let starts: Vec<usize> = (0..len).step_by(per).collect();
    let y_addr = y.as_mut_ptr() as usize;
    let run = |&s0: &usize| {
        let nb = per.min(len - s0);
        let (bm, bn, dst, l, r) = match split {
            Split::Rows => (nb, n, s0 * n, s0 * lhs.rs, 0),
            Split::Cols => (m, nb, s0, 0, s0 * rhs.cs),
        };
        // SAFETY: block `s0` writes only rows (or columns) s0..s0+nb of `y`, disjoint from every other block's;
        // `y` outlives the parallel loop; `reaches` keeps every read inside the operands.
        unsafe {
            gemm::gemm(
                bm,
                bn,
                k,
                (y_addr as *mut T).add(dst),
                1,
                n as isize,
                false,
                lhs.data.as_ptr().add(l),
                lhs.cs as isize,
                lhs.rs as isize,
                rhs.data.as_ptr().add(r),
                rhs.cs as isize,
                rhs.rs as isize,
                T::zero(),
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    if starts.len() == 1 {
        run(&starts[0]);
    } else {
        starts.par_iter().for_each(run);
    }
    // SAFETY: the blocks cover all m × n elements, each written by gemm with its destination not read.
    unsafe { y.set_len(m * n) };
    y
}

/// `y (rows × n) = x (rows × k) · B (k × n)`, `B`'s element `(i, j)` at `b[i·b_rs + j·b_cs]`, its columns
/// split into one block per thread. With `transposed`, each block is computed column-major into a buffer of
/// its own and transposed into `y` (see the module doc).
///
/// # Safety
/// `y` is valid for writes of `rows × n` elements; they are written, never read before.
#[allow(clippy::too_many_arguments)]
unsafe fn split_gemm<T: Float>(
    y: *mut T,
    x: &[T],
    rows: usize,
    k: usize,
    b: &[T],
    (b_rs, b_cs): (usize, usize),
    n: usize,
    transposed: bool,
    extra: Option<Extra<T>>,
) {
    assert_eq!(x.len(), rows * k, "x holds {} elements, not {rows} × {k}", x.len());
    if rows == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs, "B's strides reach past its {} elements", b.len());
    if let Some(e) = &extra {
        assert_eq!(e.a.len(), rows * e.k, "the extra product's a holds {} elements, not {rows} × {}", e.a.len(), e.k);
        let (rs, cs) = e.b_strides;
        assert!(e.k == 0 || e.b.len() > (e.k - 1) * rs + (n - 1) * cs, "the extra product's B is too small");
    }
    let threads = candle_core::utils::get_num_threads().max(1);
    let blocks = if rows * k * n < PAR_MIN_WORK { 1 } else { threads };
    let per = if transposed && n > WIDE && blocks > 1 {
        WIDE_BLOCK
    } else {
        n.div_ceil(blocks).next_multiple_of(ALIGN).min(n)
    };
    let starts: Vec<usize> = (0..n).step_by(per).collect();
    let y_addr = y as usize;
    let run = |&j0: &usize| {
        let nb = per.min(n - j0);
        // The block's destination: `y`'s columns j0..j0+nb (row stride n), or a column-major (rows × nb) buffer.
        let mut col_major = if transposed { vec![T::zero(); rows * nb] } else { Vec::new() };
        let (dst, dst_cs, dst_rs) = if transposed {
            (col_major.as_mut_ptr(), rows as isize, 1)
        } else {
            // SAFETY: j0 < n, inside `y`.
            (unsafe { (y_addr as *mut T).add(j0) }, 1, n as isize)
        };
        // SAFETY: block `j0` writes only its own buffer or columns j0..j0+nb of each row of `y`, disjoint from
        // every other block's; `y` outlives the parallel loop. The asserts keep every read inside `x` and `b`.
        unsafe {
            gemm::gemm(
                rows,
                nb,
                k,
                dst,
                dst_cs,
                dst_rs,
                false,
                x.as_ptr(),
                1,
                k as isize,
                b.as_ptr().add(j0 * b_cs),
                b_cs as isize,
                b_rs as isize,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            if let Some(e) = &extra {
                if e.k > 0 {
                    let (rs, cs) = e.b_strides;
                    // dst = dst + scale · a · B[:, j0..j0+nb]
                    gemm::gemm(
                        rows,
                        nb,
                        e.k,
                        dst,
                        dst_cs,
                        dst_rs,
                        true,
                        e.a.as_ptr(),
                        1,
                        e.k as isize,
                        e.b.as_ptr().add(j0 * cs),
                        cs as isize,
                        rs as isize,
                        T::one(),
                        e.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
        }
        if transposed {
            // Tiles of 16 × 16 keep both sides of the transposition within a few cache lines.
            const TILE: usize = 16;
            for r0 in (0..rows).step_by(TILE) {
                for c0 in (0..nb).step_by(TILE) {
                    for r in r0..(r0 + TILE).min(rows) {
                        for c in c0..(c0 + TILE).min(nb) {
                            // SAFETY: row r < rows, column j0 + c < n: inside `y`, in this block's columns.
                            unsafe { *(y_addr as *mut T).add(r * n + j0 + c) = col_major[c * rows + r] };
                        }
                    }
                }
            }
        }
    };
    if starts.len() == 1 {
        run(&starts[0]);
    } else {
        starts.par_iter().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64], rows: usize, inp: usize, w: &[f64], out: usize) -> Vec<f64> {
        let mut y = vec![0.0; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum();
            }
        }
        y
    }

    #[test]
    fn matches_the_definition_in_every_block_layout() {
        // Sizes around the block alignment and the threading threshold: one block, a partial last block, many.
        for &(rows, inp, out) in &[
            (1, 3, 5),
            (7, 33, 65),
            (128, 64, 130),
            (200, 64, 130),
            (5, 576, 1000),
            (3, 100, 64),
            (4, 8, 8200),
            (70, 16, 9000),
        ] {
            let x: Vec<f64> = (0..rows * inp).map(|i| ((i * 37 % 101) as f64 - 50.0) / 17.0).collect();
            let w: Vec<f64> = (0..out * inp).map(|i| ((i * 53 % 97) as f64 - 48.0) / 23.0).collect();
            let got = x_wt(&x, rows, inp, &w, out);
            let want = naive(&x, rows, inp, &w, out);
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-9 * (1.0 + e.abs()), "{rows}×{inp}·({out}×{inp})ᵀ: {g} vs {e}");
            }
            // g · W with g (rows × out): the same product as g · (Wᵀ)ᵀ.
            let g: Vec<f64> = (0..rows * out).map(|i| ((i * 29 % 89) as f64 - 44.0) / 13.0).collect();
            let wt: Vec<f64> = (0..inp * out).map(|i| w[(i % out) * inp + i / out]).collect(); // (inp, out)
            let got = x_w(&g, rows, out, &w, inp);
            let want = naive(&g, rows, out, &wt, inp);
            for (a, e) in got.iter().zip(&want) {
                assert!((a - e).abs() <= 1e-9 * (1.0 + e.abs()), "{rows}×{out}·({out}×{inp}): {a} vs {e}");
            }
        }
    }

    #[test]
    fn the_transposed_block_gives_the_same_bits() {
        // The decode-sized path must not change a sampled token: same sums, same order, as the row-major one.
        for &(rows, inp, out) in &[(2, 576, 1536), (32, 1536, 576), (128, 64, 130), (64, 96, 9000)] {
            let x: Vec<f32> = (0..rows * inp).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let w: Vec<f32> = (0..out * inp).map(|i| ((i * 53 % 97) as f32 - 48.0) / 23.0).collect();
            let mut plain = vec![0f32; rows * out];
            let mut transposed = vec![0f32; rows * out];
            // SAFETY: both hold rows × out elements.
            unsafe {
                split_gemm(plain.as_mut_ptr(), &x, rows, inp, &w, (1, inp), out, false, None);
                split_gemm(transposed.as_mut_ptr(), &x, rows, inp, &w, (1, inp), out, true, None);
            }
            assert!(plain.iter().zip(&transposed).all(|(a, b)| a.to_bits() == b.to_bits()), "{rows}×{inp}×{out}");
        }
    }
}
