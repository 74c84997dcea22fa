// Fake libnccl (test tool, see README.md): communicators of one process
// whose collectives meet in host memory. Device memory is host memory in
// the emulator, so an all-reduce is a barrier across the ranks' threads
// and a sum. It checks what the real library would reject or hang on:
// ranks that disagree on the operations of a round (count, type, op, or
// how many in a group), a rank that never arrives (an error after
// EMU_NCCL_TIMEOUT seconds, default 60, instead of a hang), calls on a
// destroyed communicator, unbalanced group calls.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

enum { ok = 0, unhandledCuda = 1, systemError = 2, internalError = 3, invalidArgument = 4, invalidUsage = 5 };

struct Op {
    const void* send;
    void* recv;
    size_t count;
    int type, op;
};

struct Clique {
    int n;
    std::mutex mu;
    std::condition_variable cv;
    long gen = 0;
    int arrived = 0;
    std::vector<std::vector<Op>> ops; // this round's operations, by rank
    int status = ok;
    std::string why;
    explicit Clique(int n) : n(n), ops(n) {}
};

struct Comm {
    std::shared_ptr<Clique> clique;
    int rank, dev;
    bool destroyed = false;
};

static thread_local int groupDepth = 0;
static thread_local std::vector<std::pair<Comm*, Op>> pending;
static thread_local std::string lastError;
static std::mutex envMu;
static std::string nvlsSeen = "(no communicator yet)";

static int fail(int code, const std::string& why) {
    lastError = why;
    return code;
}

static size_t typeSize(int t) {
    switch (t) {
    case 0: case 1: return 1;
    case 2: case 3: return 4;
    case 4: case 5: return 8;
    case 6: case 9: return 2;
    case 7: return 4;
    case 8: return 8;
    }
    return 0;
}

// sumF32 writes the rank-order float32 sum of every rank's operation i.
static void sumF32(Clique& c, size_t i) {
    size_t count = c.ops[0][i].count;
    std::vector<float> acc(count, 0.0f);
    for (int r = 0; r < c.n; r++) {
        const float* s = (const float*)c.ops[r][i].send;
        for (size_t j = 0; j < count; j++) acc[j] += s[j];
    }
    for (int r = 0; r < c.n; r++) memcpy(c.ops[r][i].recv, acc.data(), count * sizeof(float));
}

// run takes part in one round of clique c as rank with its operations.
static int run(Comm* comm, std::vector<Op> mine) {
    Clique& c = *comm->clique;
    double limit = 60;
    if (const char* e = getenv("EMU_NCCL_TIMEOUT")) limit = atof(e);
    std::unique_lock<std::mutex> lk(c.mu);
    long gen = c.gen;
    c.ops[comm->rank] = std::move(mine);
    if (++c.arrived == c.n) {
        c.status = ok;
        c.why.clear();
        for (int r = 1; r < c.n && c.status == ok; r++) {
            if (c.ops[r].size() != c.ops[0].size()) {
                c.status = invalidUsage;
                c.why = "emulated NCCL: rank 0 issued " + std::to_string(c.ops[0].size()) + " all-reduce(s) in this round, rank " +
                        std::to_string(r) + " " + std::to_string(c.ops[r].size());
                break;
            }
            for (size_t i = 0; i < c.ops[0].size(); i++) {
                const Op &a = c.ops[0][i], &b = c.ops[r][i];
                if (a.count != b.count || a.type != b.type || a.op != b.op) {
                    c.status = invalidUsage;
                    c.why = "emulated NCCL: all-reduce " + std::to_string(i) + " of the round differs between rank 0 (count " +
                            std::to_string(a.count) + ") and rank " + std::to_string(r) + " (count " + std::to_string(b.count) + ")";
                    break;
                }
            }
        }
        for (size_t i = 0; c.status == ok && i < c.ops[0].size(); i++) sumF32(c, i);
        c.arrived = 0;
        c.gen++;
        c.cv.notify_all();
        if (c.status != ok) return fail(c.status, c.why);
        return ok;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit);
    if (!c.cv.wait_until(lk, deadline, [&] { return c.gen != gen; })) {
        c.arrived--;
        return fail(internalError, "emulated NCCL: rank " + std::to_string(comm->rank) + " waited " + std::to_string((int)limit) +
                                       " s for the other ranks of an all-reduce");
    }
    if (c.status != ok) return fail(c.status, c.why);
    return ok;
}

extern "C" {
int ncclGetVersion(int* v) {
    *v = 22800; // 2.28.0
    return ok;
}
const char* ncclGetErrorString(int r) {
    switch (r) {
    case ok: return "no error";
    case unhandledCuda: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case systemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case internalError: return "internal error - please report this issue to the NCCL developers";
    case invalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case invalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    }
    return "unknown result code";
}
const char* ncclGetLastError(Comm*) { return lastError.c_str(); }

// emuNcclNvlsEnable is the emulator's own: the value of NCCL_NVLS_ENABLE
// (or "(unset)") at the latest ncclCommInitAll, as the real library would
// read it, so tests can check what reached the C environment.
const char* emuNcclNvlsEnable() {
    std::lock_guard<std::mutex> g(envMu);
    return nvlsSeen.c_str();
}

int ncclCommInitAll(Comm** comms, int ndev, const int* devlist) {
    if (!comms || ndev <= 0) return fail(invalidArgument, "ncclCommInitAll: no communicators asked for");
    const char* e = getenv("EMU_DEVICES"); // as the fake driver counts them
    int have = e ? atoi(e) : 2;
    for (int i = 0; i < ndev; i++) {
        int d = devlist ? devlist[i] : i;
        if (d < 0 || d >= have) return fail(invalidArgument, "ncclCommInitAll: no device " + std::to_string(d));
        for (int j = 0; j < i; j++)
            if ((devlist ? devlist[j] : j) == d) return fail(invalidUsage, "ncclCommInitAll: device " + std::to_string(d) + " twice");
    }
    {
        std::lock_guard<std::mutex> g(envMu);
        const char* e = getenv("NCCL_NVLS_ENABLE");
        nvlsSeen = e ? e : "(unset)";
    }
    auto c = std::make_shared<Clique>(ndev);
    for (int i = 0; i < ndev; i++) comms[i] = new Comm{c, i, devlist ? devlist[i] : i};
    return ok;
}
int ncclCommCount(const Comm* c, int* n) { *n = c->clique->n; return ok; }
int ncclCommUserRank(const Comm* c, int* r) { *r = c->rank; return ok; }
int ncclCommCuDevice(const Comm* c, int* d) { *d = c->dev; return ok; }
int ncclCommGetAsyncError(Comm* c, int* e) {
    *e = ok;
    if (c->destroyed) return fail(invalidArgument, "ncclCommGetAsyncError: communicator was destroyed");
    return ok;
}
int ncclCommDestroy(Comm* c) {
    if (!c) return ok;
    if (c->destroyed) return fail(invalidArgument, "ncclCommDestroy: destroyed twice");
    c->destroyed = true; // kept (a leak in a test tool) so use after destroy is caught
    return ok;
}
int ncclCommAbort(Comm* c) { return ncclCommDestroy(c); }

int ncclGroupStart() {
    groupDepth++;
    return ok;
}
int ncclGroupEnd() {
    if (groupDepth == 0) return fail(invalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--groupDepth > 0) return ok;
    std::vector<std::pair<Comm*, Op>> ops;
    ops.swap(pending);
    if (ops.empty()) return ok;
    Comm* comm = ops[0].first;
    std::vector<Op> mine;
    for (auto& p : ops) {
        if (p.first != comm) return fail(invalidUsage, "emulated NCCL: one group spans several communicators (not emulated)");
        mine.push_back(p.second);
    }
    return run(comm, std::move(mine));
}

int ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* comm, void* stream) {
    if (!comm || comm->destroyed) return fail(invalidArgument, "ncclAllReduce: invalid or destroyed communicator");
    if (!stream) return fail(invalidArgument, "ncclAllReduce: the default stream (the backend has its own)");
    if (!send || !recv) return fail(invalidArgument, "ncclAllReduce: null buffer");
    if (typeSize(type) == 0) return fail(invalidArgument, "ncclAllReduce: invalid data type " + std::to_string(type));
    if (type != 7 || op != 0) return fail(invalidArgument, "emulated NCCL: only the float32 sum is emulated");
    Op o{send, recv, count, type, op};
    if (groupDepth > 0) {
        pending.push_back({comm, o});
        return ok;
    }
    return run(comm, {o});
}
}
