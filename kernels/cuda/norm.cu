// norm.cu: normalisations over groups of contiguous channels, one warp per
// (row, group); sums in double; each lane reads its elements twice and
// writes them last, so out may alias the inputs.

// k_group_norm: mode 0 = RMSNorm of y·silu(z) (z may be null), mode 1 =
// LayerNorm (mean and biased variance, two passes), over groups of size
// group of rows of n channels; weight and bias index the channel within
// the row (bias may be null).
extern "C" __global__ void k_group_norm(void* out, int obf, const void* y, int ybf, const void* z, int zbf, const void* w, int wbf,
                                        const void* bias, int bbf, i64 groups, int n, int group, float eps, int mode) {
    int lane = threadIdx.x & 31;
    i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    i64 nwarps = ((i64)gridDim.x * blockDim.x) >> 5;
    for (i64 gi = warp; gi < groups; gi += nwarps) {
        i64 base = gi * group;             // first element of the group
        int c0 = (int)(base % n);          // its channel within the row
        double mean = 0.0;
        if (mode == 1) {
            double s = 0.0;
            for (int j = lane; j < group; j += 32) s += (double)ld_elem(y, ybf, base + j);
            mean = warp_sum_d(s) / group;
        }
        double ss = 0.0;
        for (int j = lane; j < group; j += 32) {
            double v = (double)ld_elem(y, ybf, base + j);
            if (z) {
                double zv = (double)ld_elem(z, zbf, base + j);
                v *= zv / (1.0 + exp(-zv));
            }
            v -= mean;
            ss += v * v;
        }
        double inv = 1.0 / sqrt(warp_sum_d(ss) / group + (double)eps);
        for (int j = lane; j < group; j += 32) {
            double v = (double)ld_elem(y, ybf, base + j);
            if (z) {
                double zv = (double)ld_elem(z, zbf, base + j);
                v *= zv / (1.0 + exp(-zv));
            }
            double r = (v - mean) * inv * (double)ld_elem(w, wbf, c0 + j);
            if (bias) r += (double)ld_elem(bias, bbf, c0 + j);
            st_elem(out, obf, base + j, (float)r);
        }
    }
}
