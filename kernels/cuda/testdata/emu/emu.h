// emu.h: runs CUDA C kernels of matsurgery on the CPU, for testing without
// a GPU. Included (-include) before a kernel module compiled with g++ and
// -DMATSURGERY_EMU. One block at a time; its threads are fibers switched at
// barriers and warp collectives; warp-level instructions (shuffles, mma,
// ldmatrix) are computed from the documented fragment layouts; cp.async
// copies happen at the matching wait (so a read before the wait sees stale
// data, as it may on a GPU).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>
#include <algorithm>
#include <sys/mman.h>

using std::max;
using std::min;

#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#ifndef __global__
#define __global__
#endif

namespace emu {
struct Dim3 { unsigned x, y, z; };

struct Pending { void* dst; const void* src; int bytes; long group; };

enum { RUN = 0, WAIT_BLOCK = 1, WAIT_WARP = 2, DONE = 3 };

struct Fiber {
    void* sp;
    Dim3 tid;
    int lin, warp, state;
    std::vector<Pending> cp;
    long committed = 0;
    char* stack = nullptr;
};

struct Slot { unsigned char b[128]; };

struct Runtime {
    Dim3 grid{}, block{}, bid{};
    unsigned char* dyn = nullptr;
    std::vector<Fiber> fibers;
    Fiber* cur = nullptr;
    void* sched_sp = nullptr;
    int alive = 0, bar_arrived = 0;
    std::vector<int> warp_alive, warp_arrived;
    std::vector<Slot> slots; // [warp*32 + lane]
    std::function<void()> body;
    std::mt19937 rng{1};
    int order = 0; // 0 forward, 1 reverse, 2 random (EMU_ORDER)
    const char* name = "";
};
inline Runtime& rt() { static Runtime r; return r; }
}

extern "C" void emu_switch(void** save, void* to);
__asm__(
    ".text\n.globl emu_switch\n.type emu_switch,@function\nemu_switch:\n"
    "push %rbp\npush %rbx\npush %r12\npush %r13\npush %r14\npush %r15\n"
    "sub $8, %rsp\nstmxcsr (%rsp)\nfnstcw 4(%rsp)\n"
    "mov %rsp, (%rdi)\nmov %rsi, %rsp\n"
    "ldmxcsr (%rsp)\nfldcw 4(%rsp)\nadd $8, %rsp\n"
    "pop %r15\npop %r14\npop %r13\npop %r12\npop %rbx\npop %rbp\nret\n"
    ".size emu_switch, .-emu_switch\n");

namespace emu {
inline void yield() { emu_switch(&rt().cur->sp, rt().sched_sp); }

inline void release_block() {
    Runtime& r = rt();
    r.bar_arrived = 0;
    for (auto& f : r.fibers) if (f.state == WAIT_BLOCK) f.state = RUN;
}
inline void release_warp(int w) {
    Runtime& r = rt();
    r.warp_arrived[w] = 0;
    for (auto& f : r.fibers) if (f.state == WAIT_WARP && f.warp == w) f.state = RUN;
}

inline void syncthreads() {
    Runtime& r = rt();
    if (++r.bar_arrived == r.alive) { release_block(); return; }
    r.cur->state = WAIT_BLOCK;
    yield();
}
inline void syncwarp() {
    Runtime& r = rt();
    int w = r.cur->warp;
    if (++r.warp_arrived[w] == r.warp_alive[w]) { release_warp(w); return; }
    r.cur->state = WAIT_WARP;
    yield();
}

[[noreturn]] inline void fiber_entry() {
    Runtime& r = rt();
    r.body();
    Fiber* f = r.cur;
    f->state = DONE;
    r.alive--;
    r.warp_alive[f->warp]--;
    if (r.bar_arrived > 0 && r.bar_arrived == r.alive) release_block();
    if (r.warp_arrived[f->warp] > 0 && r.warp_arrived[f->warp] == r.warp_alive[f->warp]) release_warp(f->warp);
    emu_switch(&f->sp, r.sched_sp);
    abort();
}

const size_t STACK = 256 << 10;

inline void launch(const char* name, Dim3 grid, Dim3 block, unsigned smem, std::function<void()> body) {
    Runtime& r = rt();
    r.name = name;
    r.grid = grid;
    r.block = block;
    r.body = std::move(body);
    const char* ord = getenv("EMU_ORDER");
    r.order = ord ? atoi(ord) : 0;
    unsigned n = block.x * block.y * block.z;
    if (n % 32 != 0) { fprintf(stderr, "emu: %s: block of %u threads is not whole warps\n", name, n); abort(); }
    r.fibers.assign(n, Fiber{});
    for (auto& f : r.fibers) {
        f.stack = (char*)mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (f.stack == MAP_FAILED) { perror("emu mmap"); abort(); }
    }
    std::vector<unsigned char> dyn(smem + 16);
    r.dyn = (unsigned char*)(((uintptr_t)dyn.data() + 15) & ~(uintptr_t)15);
    r.slots.assign(n, Slot{});
    for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
    for (unsigned bx = 0; bx < grid.x; bx++) {
        r.bid = {bx, by, bz};
        memset(r.dyn, 0xff, smem); // poison: NaN for float and bf16
        r.alive = n;
        r.bar_arrived = 0;
        r.warp_alive.assign(n / 32, 32);
        r.warp_arrived.assign(n / 32, 0);
        for (unsigned i = 0; i < n; i++) {
            Fiber& f = r.fibers[i];
            f.lin = i;
            f.tid = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
            f.warp = i / 32;
            f.state = RUN;
            f.cp.clear();
            f.committed = 0;
            uint64_t* top = (uint64_t*)(f.stack + STACK);
            top[-1] = 0;
            top[-2] = (uint64_t)(void*)&fiber_entry;
            for (int k = 3; k <= 8; k++) top[-k] = 0;
            top[-9] = 0x1f80ull | (0x037full << 32);
            f.sp = &top[-9];
        }
        size_t next = 0;
        for (;;) {
            // pick a runnable fiber
            Fiber* pick = nullptr;
            if (r.order == 2) {
                std::vector<Fiber*> run;
                for (auto& f : r.fibers) if (f.state == RUN) run.push_back(&f);
                if (!run.empty()) pick = run[r.rng() % run.size()];
            } else {
                for (size_t k = 0; k < n; k++) {
                    size_t i = (next + k) % n;
                    size_t j = r.order == 1 ? n - 1 - i : i;
                    if (r.fibers[j].state == RUN) { pick = &r.fibers[j]; next = i + 1; break; }
                }
            }
            if (!pick) {
                if (r.alive == 0) break;
                fprintf(stderr, "emu: %s: deadlock in block (%u,%u,%u): %d threads alive, none can run\n", name, bx, by, bz, r.alive);
                abort();
            }
            r.cur = pick;
            emu_switch(&r.sched_sp, pick->sp);
        }
    }
    for (auto& f : r.fibers) munmap(f.stack, STACK);
    r.fibers.clear();
}

inline int lane() { return rt().cur->lin & 31; }
inline Slot& slot(int l) { return rt().slots[(rt().cur->lin & ~31) + l]; }

template <class T> inline T shfl_pick(T v, int src) {
    static_assert(sizeof(T) <= 128, "slot too small");
    memcpy(slot(lane()).b, &v, sizeof(T));
    syncwarp();
    T out;
    memcpy(&out, slot(src & 31).b, sizeof(T));
    syncwarp();
    return out;
}
} // namespace emu

#define threadIdx (emu::rt().cur->tid)
#define blockIdx (emu::rt().bid)
#define blockDim (emu::rt().block)
#define gridDim (emu::rt().grid)
#define dyn_smem (emu::rt().dyn)
#define __syncthreads() emu::syncthreads()
#define __syncwarp(...) emu::syncwarp()

template <class T> inline T __shfl_xor_sync(unsigned, T v, int m) { return emu::shfl_pick(v, emu::lane() ^ m); }
template <class T> inline T __shfl_sync(unsigned, T v, int src) { return emu::shfl_pick(v, src); }
template <class T> inline T __shfl_up_sync(unsigned, T v, unsigned d) {
    int l = emu::lane();
    T o = emu::shfl_pick(v, l >= (int)d ? l - (int)d : l);
    return o;
}
template <class T> inline T __shfl_down_sync(unsigned, T v, unsigned d) {
    int l = emu::lane();
    return emu::shfl_pick(v, l + (int)d < 32 ? l + (int)d : l);
}

inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }

// ---- warp matrix instructions
namespace emu {
struct MmaIn { unsigned a[4], b[2]; };
inline float bf(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
inline unsigned short half(unsigned r, int hi) { return hi ? (unsigned short)(r >> 16) : (unsigned short)(r & 0xffff); }
}

inline void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
    using namespace emu;
    MmaIn in;
    memcpy(in.a, a, 16);
    memcpy(in.b, b, 8);
    memcpy(slot(lane()).b, &in, sizeof in);
    syncwarp();
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; L++) {
        MmaIn x;
        memcpy(&x, slot(L).b, sizeof x);
        int g = L >> 2, t = L & 3;
        for (int hh = 0; hh < 2; hh++) {
            A[g][2 * t + hh] = bf(half(x.a[0], hh));
            A[g + 8][2 * t + hh] = bf(half(x.a[1], hh));
            A[g][2 * t + 8 + hh] = bf(half(x.a[2], hh));
            A[g + 8][2 * t + 8 + hh] = bf(half(x.a[3], hh));
            B[2 * t + hh][g] = bf(half(x.b[0], hh));
            B[2 * t + 8 + hh][g] = bf(half(x.b[1], hh));
        }
    }
    syncwarp();
    int L = lane(), g = L >> 2, t = L & 3;
    for (int q = 0; q < 4; q++) {
        int row = g + 8 * (q >> 1), col = 2 * t + (q & 1);
        float acc = d[q];
        for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
        d[q] = acc;
    }
}

namespace emu {
inline void ldsm(unsigned* r, const void* row, int count, bool trans) {
    const void* p = row;
    memcpy(slot(lane()).b, &p, sizeof p);
    syncwarp();
    const unsigned short* rows[32];
    for (int L = 0; L < 32; L++) memcpy(&rows[L], slot(L).b, sizeof(void*));
    syncwarp();
    int L = lane();
    for (int j = 0; j < count; j++) {
        unsigned short e0, e1;
        if (!trans) {
            const unsigned short* rp = rows[8 * j + (L >> 2)];
            e0 = rp[2 * (L & 3)];
            e1 = rp[2 * (L & 3) + 1];
        } else {
            e0 = rows[8 * j + 2 * (L & 3)][L >> 2];
            e1 = rows[8 * j + 2 * (L & 3) + 1][L >> 2];
        }
        r[j] = (unsigned)e0 | ((unsigned)e1 << 16);
    }
}
}
// movmatrix.sync.aligned.m8n8.trans.b16: lane L holds row L/4, columns
// 2(L%4) and 2(L%4)+1 of an 8×8 matrix of 16-bit values (low half first);
// the result holds the same positions of the transposed matrix.
inline unsigned movm_trans(unsigned a) {
    using namespace emu;
    memcpy(slot(lane()).b, &a, 4);
    syncwarp();
    unsigned short M[8][8];
    for (int L = 0; L < 32; L++) {
        unsigned v;
        memcpy(&v, slot(L).b, 4);
        M[L >> 2][2 * (L & 3)] = half(v, 0);
        M[L >> 2][2 * (L & 3) + 1] = half(v, 1);
    }
    syncwarp();
    int L = lane(), g = L >> 2, t = L & 3;
    return (unsigned)M[2 * t][g] | ((unsigned)M[2 * t + 1][g] << 16);
}

// ex2.approx.ftz.f32: 2^x, results below the smallest normal flushed to 0.
inline float ex2_ftz(float x) {
    float r = exp2f(x);
    return r < 1.17549435e-38f ? 0.f : r;
}

inline void st_global_f2(float* p, float a, float b) {
    p[0] = a;
    p[1] = b;
}

// Shared addresses are offsets into the dynamic shared memory.
inline unsigned smem_u32(const void* p) { return (unsigned)((const unsigned char*)p - emu::rt().dyn); }
inline const void* emu_smem(unsigned a) { return emu::rt().dyn + a; }
inline void ldsm_x4(unsigned* r, unsigned a) { emu::ldsm(r, emu_smem(a), 4, false); }
inline void ldsm_x4_trans(unsigned* r, unsigned a) { emu::ldsm(r, emu_smem(a), 4, true); }
inline void ldsm_x2(unsigned* r, unsigned a) { emu::ldsm(r, emu_smem(a), 2, false); }
inline void ldsm_x2_trans(unsigned* r, unsigned a) { emu::ldsm(r, emu_smem(a), 2, true); }

// EMU_CPASYNC=eager lands each copy at issue (the other extreme of the
// allowed timing: a buffer refilled too early shows up as wrong data).
inline void cp_async16(unsigned dst, const void* src, int bytes) {
    emu::Fiber* f = emu::rt().cur;
    static int eager = -1;
    if (eager < 0) { const char* e = getenv("EMU_CPASYNC"); eager = e && !strcmp(e, "eager"); }
    if (eager) {
        memcpy((void*)emu_smem(dst), src, bytes);
        memset((char*)emu_smem(dst) + bytes, 0, 16 - bytes);
        return;
    }
    f->cp.push_back({(void*)emu_smem(dst), src, bytes, f->committed});
}

namespace emu {
inline unsigned short rne(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
}
inline unsigned cvt_bf16x2(float lo, float hi) { return (unsigned)emu::rne(lo) | ((unsigned)emu::rne(hi) << 16); }

struct float2 { float x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline void cp_async_commit() { emu::rt().cur->committed++; }
namespace emu {
inline void cp_wait(long n) {
    Fiber* f = rt().cur;
    std::vector<Pending> keep;
    for (auto& p : f->cp) {
        if (p.group < f->committed - n) {
            memcpy(p.dst, p.src, p.bytes);
            memset((char*)p.dst + p.bytes, 0, 16 - p.bytes);
        } else keep.push_back(p);
    }
    f->cp.swap(keep);
}
}
inline void cp_async_wait1() { emu::cp_wait(1); }
inline void cp_async_wait0() { emu::cp_wait(0); }
