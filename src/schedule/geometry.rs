//! The geometry of the steps that are not loop kernels: convolutions,
//! poolings and block copies. Plain descriptions with their sizes; each
//! backend runs them its own way (the JIT's routines are in
//! `backend/jit/native.rs`).

use crate::ir::PoolOp;

/// The geometry of a convolution: input `[n, c, h, w]`, kernel
/// `[o, c, kh, kw]`, output `[n, o, oh, ow]`, one stride and one zero
/// padding for both spatial axes.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
pub struct Conv {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub pad: usize,
}

/// Which of the three products a convolution step computes.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    /// `y = conv(x, w)`, operands (x, w).
    Forward,
    /// `gx` from (gy, w).
    BackInput,
    /// `gw` from (x, gy).
    BackWeight,
}

impl Conv {
    /// Rows of the unfolded input: one per (channel, kernel row, kernel
    /// column).
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the unfolded input: one per output position.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Floats of scratch each thread needs for `pass`.
    pub fn scratch_per_thread(&self, pass: ConvPass) -> usize {
        match pass {
            // Saturating: a size past memory fails the budget, not here.
            ConvPass::Forward => (self.group() * self.p()).saturating_mul(self.k() + self.o),
            ConvPass::BackWeight => (self.group() * self.p())
                .saturating_mul(self.k() + self.o)
                .saturating_add(self.o * self.k()),
            ConvPass::BackInput => (self.group() * self.p()).saturating_mul(self.k() + self.o),
        }
    }

    /// How many samples each pass unfolds (or folds back) side by side
    /// for one product: as many as fit 64K floats of unfolded input (256 KiB, in
    /// a core's L2 cache beside the weights), at least one. LeNet's layers
    /// take 4 (25×576 floats a sample) and 6 (150×64).
    pub fn group(&self) -> usize {
        ((1 << 16) / (self.k() * self.p()).max(1)).clamp(1, self.n.max(1))
    }
}

/// The geometry of a pooling: `planes` channels of `h × w` pooled by
/// `size × size` windows moved by `stride` into `oh × ow`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
pub struct Pool {
    pub op: PoolOp,
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub size: usize,
    pub stride: usize,
}

/// Copies `count` blocks of `len` floats from `src` (blocks `src_stride`
/// apart, starting at `src_at`) to `dst` (blocks `dst_stride` apart,
/// starting at `dst_at`): a slice along an axis, or one half of a
/// concatenation.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
pub struct Blocks {
    pub count: usize,
    pub len: usize,
    pub src_at: usize,
    pub src_stride: usize,
    pub dst_at: usize,
    pub dst_stride: usize,
}

/// The row a `gather` or `scatter_add` index names: a whole number in
/// `0..rows` (NaN and ±∞ fail the first test: their fractional part is
/// NaN), as the interpreter reads it.
pub fn index_row(value: f32, rows: usize) -> Option<usize> {
    (value.fract() == 0.0 && value >= 0.0 && (value as usize) < rows).then_some(value as usize)
}

impl Blocks {
    /// One block: a whole buffer of `len` floats.
    pub fn whole(len: usize) -> Blocks {
        Blocks {
            count: 1,
            len,
            src_at: 0,
            src_stride: 0,
            dst_at: 0,
            dst_stride: 0,
        }
    }

    pub fn copy(&self, src: &[f32], dst: &mut [f32]) {
        for i in 0..self.count {
            let s = self.src_at + i * self.src_stride;
            let d = self.dst_at + i * self.dst_stride;
            dst[d..d + self.len].copy_from_slice(&src[s..s + self.len]);
        }
    }
}
