// Fake libnvrtc (test tool, see README.md): "compiles" CUDA C by running g++ with emu.h into a shared
// object whose bytes stand in for the cubin; fake libcuda dlopens it.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <unistd.h>

#ifndef EMU_DIR
#error EMU_DIR
#endif

struct Prog { std::string src, name, log, bin; };

static std::string slurp(const std::string& p) { std::ifstream f(p, std::ios::binary); std::stringstream s; s << f.rdbuf(); return s.str(); }
static std::string trim(std::string s) {
    size_t a = s.find_first_not_of(" \t\n"), b = s.find_last_not_of(" \t\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// Wrapper for every `extern "C" EMU_GLOBAL_MARK void name(params)`.
static std::string wrappers(const std::string& pp) {
    std::string out;
    const std::string mark = "EMU_GLOBAL_MARK";
    size_t pos = 0;
    while ((pos = pp.find(mark, pos)) != std::string::npos) {
        pos += mark.size();
        size_t v = pp.find("void", pos);
        size_t open = pp.find('(', v);
        std::string name = trim(pp.substr(v + 4, open - v - 4));
        int depth = 0;
        size_t close = open;
        for (; close < pp.size(); close++) {
            if (pp[close] == '(') depth++;
            if (pp[close] == ')' && --depth == 0) break;
        }
        std::string params = pp.substr(open + 1, close - open - 1);
        std::vector<std::string> types;
        depth = 0;
        std::string cur;
        for (char c : params) {
            if (c == '(' || c == '<') depth++;
            if (c == ')' || c == '>') depth--;
            if (c == ',' && depth == 0) { types.push_back(cur); cur.clear(); continue; }
            cur += c;
        }
        if (!trim(cur).empty()) types.push_back(cur);
        std::string w = "extern \"C\" void __emu_launch_" + name +
            "(void** args, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem) {\n";
        std::string call = name + "(";
        for (size_t i = 0; i < types.size(); i++) {
            std::string t = trim(types[i]);
            size_t e = t.find_last_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
            std::string ty = trim(t.substr(0, e + 1));
            size_t r;
            while ((r = ty.find("__restrict")) != std::string::npos) ty.erase(r, 10);
            w += "  " + ty + " a" + std::to_string(i) + " = *(" + ty + "*)args[" + std::to_string(i) + "];\n";
            call += (i ? ", a" : "a") + std::to_string(i);
        }
        call += ")";
        w += "  emu::launch(\"" + name + "\", {gx, gy, gz}, {bx, by, bz}, smem, [=]() { " + call + "; });\n}\n";
        out += w;
        pos = close;
    }
    return out;
}

extern "C" {
int nvrtcVersion(int* major, int* minor) { *major = 13; *minor = 0; return 0; }
const char* nvrtcGetErrorString(int r) { return r == 6 ? "NVRTC_ERROR_COMPILATION" : "NVRTC_ERROR (emulator)"; }
int nvrtcCreateProgram(Prog** p, const char* src, const char* name, int, const char* const*, const char* const*) {
    *p = new Prog{src, name ? name : "prog", "", ""};
    return 0;
}
int nvrtcDestroyProgram(Prog** p) { delete *p; *p = nullptr; return 0; }
int nvrtcCompileProgram(Prog* p, int n, const char* const* opts) {
    std::string defs;
    bool arch = false;
    for (int i = 0; i < n; i++) {
        std::string o = opts[i];
        if (o.rfind("-D", 0) == 0) defs += " '" + o + "'";
        else if (o.rfind("--gpu-architecture=", 0) == 0) arch = true;
        else if (o != "--std=c++17") { p->log = "unknown option " + o; return 5; }
    }
    if (!arch) { p->log = "no --gpu-architecture"; return 5; }
    char dir[] = "/tmp/emu-nvrtc-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    std::string d = dir;
    { std::ofstream f(d + "/k.cu"); f << p->src; }
    std::string common = "g++ -std=c++17 -x c++ -DMATSURGERY_EMU -include " EMU_DIR "/emu.h" + defs;
    std::string cmd = common + " -D__global__=EMU_GLOBAL_MARK -E -P " + d + "/k.cu -o " + d + "/pp.cu 2>" + d + "/log";
    if (system(cmd.c_str()) != 0) { p->log = slurp(d + "/log"); return 6; }
    { std::ofstream f(d + "/all.cu"); f << p->src << "\n" << wrappers(slurp(d + "/pp.cu")); }
    const char* opt = getenv("EMU_OPT");
    cmd = common + " " + (opt ? opt : "-O1") + " -g -fPIC -shared -Wall -Wno-unused-function -Wno-unused-variable " + d + "/all.cu -o " + d + "/k.so 2>" + d + "/log";
    int rc = system(cmd.c_str());
    p->log = slurp(d + "/log");
    if (rc != 0) return 6;
    p->bin = slurp(d + "/k.so");
    if (!getenv("EMU_KEEP")) { std::string rm = "rm -rf " + d; system(rm.c_str()); }
    return 0;
}
int nvrtcGetProgramLogSize(Prog* p, size_t* s) { *s = p->log.size() + 1; return 0; }
int nvrtcGetProgramLog(Prog* p, char* out) { memcpy(out, p->log.c_str(), p->log.size() + 1); return 0; }
int nvrtcGetCUBINSize(Prog* p, size_t* s) { *s = p->bin.size(); return 0; }
int nvrtcGetCUBIN(Prog* p, char* out) { memcpy(out, p->bin.data(), p->bin.size()); return 0; }
int nvrtcGetPTXSize(Prog* p, size_t* s) { *s = p->bin.size(); return 0; }
int nvrtcGetPTX(Prog* p, char* out) { memcpy(out, p->bin.data(), p->bin.size()); return 0; }
}
