// Fake libcuda (driver API) over the CPU emulator: memory is host memory
// (each allocation ends at a guard page), work runs synchronously, modules
// are shared objects from the fake NVRTC. It enforces the rule that a
// context is current per thread (error 201 otherwise).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

typedef uint64_t CUdeviceptr;
static thread_local bool ctx_current = false;
static std::mutex mu;
struct Alloc { void* base; size_t len; };
static std::map<CUdeviceptr, Alloc> allocs;
struct Module { void* h; std::string path; };
struct Func { void* launch; std::string name; int maxDyn; };
struct Event { double t; };

static double now_ms() { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

#define NEEDCTX if (!ctx_current) return 201

extern "C" {
int cuInit(unsigned) { return 0; }
int cuDriverGetVersion(int* v) { *v = 13000; return 0; }
int cuGetErrorString(int r, const char** s) {
    switch (r) {
    case 1: *s = "invalid argument"; break;
    case 2: *s = "out of memory"; break;
    case 201: *s = "invalid device context"; break;
    case 500: *s = "named symbol not found"; break;
    default: *s = "emulator error";
    }
    return 0;
}
int cuGetErrorName(int r, const char** s) {
    switch (r) {
    case 1: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case 2: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case 201: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case 500: *s = "CUDA_ERROR_NOT_FOUND"; break;
    default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return 0;
}
// EMU_DEVICES devices (default 2) share the host memory, for the
// multi-rank tests with the fake NCCL.
static int devices() {
    const char* e = getenv("EMU_DEVICES");
    return e ? atoi(e) : 2;
}
int cuDeviceGetCount(int* n) { *n = devices(); return 0; }
int cuDeviceGet(int* d, int o) { if (o < 0 || o >= devices()) return 101; *d = o; return 0; }
int cuDeviceGetName(char* s, int len, int) { snprintf(s, len, "CPU emulator"); return 0; }
int cuDeviceGetAttribute(int* v, int a, int) {
    switch (a) {
    case 75: *v = 9; break; case 76: *v = 0; break; case 16: *v = 4; break;
    case 97: *v = 232448; break; case 38: *v = 1 << 20; break; case 115: *v = 1; break; case 1: *v = 1024; break;
    default: *v = 0;
    }
    return 0;
}
int cuDeviceTotalMem_v2(size_t* b, int) { *b = (size_t)8 << 30; return 0; }
int cuDevicePrimaryCtxRetain(void** c, int d) { *c = (void*)(uintptr_t)(0x1 + d); return 0; }
int cuDevicePrimaryCtxRelease_v2(int) { return 0; }
int cuCtxSetCurrent(void* c) { ctx_current = c != nullptr; return 0; }
int cuMemGetInfo_v2(size_t* f, size_t* t) { NEEDCTX; *f = *t = (size_t)8 << 30; return 0; }
int cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    NEEDCTX;
    if (n == 0) return 1;
    size_t pg = getpagesize(), body = (n + 255) / 256 * 256, len = (body + pg - 1) / pg * pg + pg;
    char* base = (char*)mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return 2;
    mprotect(base + len - pg, pg, PROT_NONE);
    char* start = base + len - pg - body;
    memset(start, 0xff, body); // NaN poison
    std::lock_guard<std::mutex> g(mu);
    allocs[(CUdeviceptr)start] = {base, len};
    *p = (CUdeviceptr)start;
    return 0;
}
int cuMemFree_v2(CUdeviceptr p) {
    NEEDCTX;
    std::lock_guard<std::mutex> g(mu);
    auto it = allocs.find(p);
    if (it == allocs.end()) return 1;
    munmap(it->second.base, it->second.len);
    allocs.erase(it);
    return 0;
}
int cuMemAllocAsync(CUdeviceptr* p, size_t n, void*) { return cuMemAlloc_v2(p, n); }
int cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
int cuDeviceGetDefaultMemPool(void** p, int) { *p = (void*)0x2; return 0; }
int cuMemPoolSetAttribute(void*, int, void*) { return 0; }
int cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { NEEDCTX; memcpy((void*)d, s, n); return 0; }
int cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) { NEEDCTX; memcpy(d, (void*)s, n); return 0; }
int cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { NEEDCTX; memmove((void*)d, (void*)s, n); return 0; }
int cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) { NEEDCTX; memset((void*)d, v, n); return 0; }
int cuModuleLoadData(Module** m, const void* image) {
    NEEDCTX;
    // The image is a shared object; its size is in the ELF section header.
    const unsigned char* e = (const unsigned char*)image;
    if (memcmp(e, "\x7f" "ELF", 4) != 0) return 200;
    uint64_t shoff; uint16_t shentsize, shnum;
    memcpy(&shoff, e + 0x28, 8); memcpy(&shentsize, e + 0x3a, 2); memcpy(&shnum, e + 0x3c, 2);
    size_t size = shoff + (size_t)shentsize * shnum;
    char path[] = "/tmp/emu-module-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 999;
    if (write(fd, image, size) != (ssize_t)size) { close(fd); return 999; }
    close(fd);
    // Keep the file while the module is loaded: glibc recognises an already
    // loaded object by device and inode, which a deleted file gives away.
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!h) { fprintf(stderr, "emu: dlopen module: %s\n", dlerror()); return 200; }
    *m = new Module{h, path};
    return 0;
}
int cuModuleUnload(Module* m) { dlclose(m->h); unlink(m->path.c_str()); delete m; return 0; }
int cuModuleGetFunction(Func** f, Module* m, const char* name) {
    void* s = dlsym(m->h, (std::string("__emu_launch_") + name).c_str());
    if (!s) return 500;
    *f = new Func{s, name, 48 << 10};
    return 0;
}
int cuFuncSetAttribute(Func* f, int attr, int v) {
    if (attr == 8) { if (v > 232448) return 1; f->maxDyn = v; }
    return 0;
}
int cuFuncGetAttribute(int* v, int, Func*) { *v = 0; return 0; }
int cuLaunchKernel(Func* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, void*, void** params, void** extra) {
    NEEDCTX;
    if (extra) return 1;
    if ((int)smem > f->maxDyn) { fprintf(stderr, "emu: %s: %u bytes of dynamic shared memory over the limit %d\n", f->name.c_str(), smem, f->maxDyn); return 1; }
    if (bx * by * bz > 1024 || bx * by * bz == 0 || gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return 1;
    // One kernel at a time in the process: the modules of every backend
    // (every emulated device, each on its owner thread) share emu.h's
    // runtime (a GNU-unique inline static), and blocks run as fibers.
    static std::mutex launchMu;
    std::lock_guard<std::mutex> g(launchMu);
    ((void (*)(void**, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned))f->launch)(params, gx, gy, gz, bx, by, bz, smem);
    return 0;
}
int cuStreamCreate(void** s, unsigned) { NEEDCTX; *s = (void*)0x3; return 0; }
int cuStreamDestroy_v2(void*) { return 0; }
int cuStreamSynchronize(void*) { NEEDCTX; return 0; }
int cuEventCreate(Event** e, unsigned) { NEEDCTX; *e = new Event{0}; return 0; }
int cuEventDestroy_v2(Event* e) { delete e; return 0; }
int cuEventRecord(Event* e, void*) { NEEDCTX; e->t = now_ms(); return 0; }
int cuEventSynchronize(Event*) { return 0; }
int cuEventElapsedTime_v2(float* ms, Event* a, Event* b) { *ms = (float)(b->t - a->t); return 0; }
}
