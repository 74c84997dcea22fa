package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// nvrtcAPI holds the NVRTC functions used to compile the embedded kernel
// sources at run time.
type nvrtcAPI struct {
	lib                                           *library
	version, getErrorString                       uintptr
	createProgram, destroyProgram, compileProgram uintptr
	getProgramLogSize, getProgramLog              uintptr
	getCUBINSize, getCUBIN, getPTXSize, getPTX    uintptr
	major, minor                                  int
}

func loadNVRTC() (*nvrtcAPI, error) {
	lib, err := openLibrary(specNVRTC)
	if err != nil {
		return nil, err
	}
	// NVRTC opens its builtins library (libnvrtc-builtins.so.X.Y) by
	// soname at compile time; when NVRTC came from a folder the loader
	// does not search, load the builtins from that folder first.
	if strings.Contains(lib.path, "/") {
		matches, _ := filepath.Glob(filepath.Join(filepath.Dir(lib.path), "libnvrtc-builtins.so.*"))
		for _, m := range matches {
			if h, err := purego.Dlopen(m, purego.RTLD_NOW|purego.RTLD_GLOBAL); err == nil && h != 0 {
				break
			}
		}
	}
	n := &nvrtcAPI{lib: lib}
	err = lib.symbols(map[*uintptr][]string{
		&n.version:           {"nvrtcVersion"},
		&n.getErrorString:    {"nvrtcGetErrorString"},
		&n.createProgram:     {"nvrtcCreateProgram"},
		&n.destroyProgram:    {"nvrtcDestroyProgram"},
		&n.compileProgram:    {"nvrtcCompileProgram"},
		&n.getProgramLogSize: {"nvrtcGetProgramLogSize"},
		&n.getProgramLog:     {"nvrtcGetProgramLog"},
		&n.getCUBINSize:      {"nvrtcGetCUBINSize"},
		&n.getCUBIN:          {"nvrtcGetCUBIN"},
		&n.getPTXSize:        {"nvrtcGetPTXSize"},
		&n.getPTX:            {"nvrtcGetPTX"},
	})
	if err != nil {
		return nil, err
	}
	var major, minor int32
	if err := n.check(call(n.version, uintptr(unsafe.Pointer(&major)), uintptr(unsafe.Pointer(&minor))), "nvrtcVersion"); err != nil {
		return nil, err
	}
	n.major, n.minor = int(major), int(minor)
	return n, nil
}

func (n *nvrtcAPI) check(res int32, what string) error {
	if res == 0 {
		return nil
	}
	var msg string
	if p, _, _ := purego.SyscallN(n.getErrorString, uintptr(res)); p != 0 {
		msg = cString(p)
	}
	return &Error{Call: what, Code: int(res), Msg: msg}
}

// compile turns CUDA C source into a cubin for the given architecture
// (e.g. "sm_90"). A compile error carries NVRTC's log.
func (n *nvrtcAPI) compile(name, src string, options []string) ([]byte, error) {
	var prog uintptr
	csrc, cname := cStr(src), cStr(name)
	if err := n.check(call(n.createProgram, uintptr(unsafe.Pointer(&prog)), uintptr(unsafe.Pointer(&csrc[0])),
		uintptr(unsafe.Pointer(&cname[0])), 0, 0, 0), "nvrtcCreateProgram "+name); err != nil {
		return nil, err
	}
	defer call(n.destroyProgram, uintptr(unsafe.Pointer(&prog)))

	opts := make([][]byte, len(options))
	ptrs := make([]uintptr, len(options)+1) // +1 keeps &ptrs[0] valid with no options
	for i, o := range options {
		opts[i] = cStr(o)
		ptrs[i] = uintptr(unsafe.Pointer(&opts[i][0]))
	}
	res := call(n.compileProgram, prog, uintptr(len(options)), uintptr(unsafe.Pointer(&ptrs[0])))
	runtime.KeepAlive(opts)
	if res != 0 {
		err := n.check(res, "nvrtcCompileProgram "+name)
		return nil, fmt.Errorf("%w\n%s", err, n.log(prog))
	}
	// A real architecture (sm_XY) gives a cubin; a virtual one
	// (compute_XY) gives PTX for the driver to finish.
	getSize, get, what := n.getCUBINSize, n.getCUBIN, "cubin"
	for _, o := range options {
		if strings.HasPrefix(o, "--gpu-architecture=compute_") {
			getSize, get, what = n.getPTXSize, n.getPTX, "ptx"
		}
	}
	var size uintptr
	if err := n.check(call(getSize, prog, uintptr(unsafe.Pointer(&size))), "nvrtcGet size of "+what+" "+name); err != nil {
		return nil, err
	}
	if size == 0 {
		return nil, fmt.Errorf("nvrtc %s: empty %s (options %v)", name, what, options)
	}
	bin := make([]byte, size)
	if err := n.check(call(get, prog, uintptr(unsafe.Pointer(&bin[0]))), "nvrtcGet "+what+" "+name); err != nil {
		return nil, err
	}
	return bin, nil
}

func (n *nvrtcAPI) log(prog uintptr) string {
	var size uintptr
	if call(n.getProgramLogSize, prog, uintptr(unsafe.Pointer(&size))) != 0 || size <= 1 {
		return ""
	}
	buf := make([]byte, size)
	if call(n.getProgramLog, prog, uintptr(unsafe.Pointer(&buf[0]))) != 0 {
		return ""
	}
	return strings.TrimRight(string(buf), "\x00\n")
}

// cacheDir is where compiled kernels are kept: $MATSURGERY_CUDA_CACHE
// ("off" disables the cache), else <user cache dir>/matsurgery/cuda.
func cacheDir() string {
	if d := os.Getenv("MATSURGERY_CUDA_CACHE"); d != "" {
		if d == "off" {
			return ""
		}
		return d
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(base, "matsurgery", "cuda")
}

// cacheKey names one compiled module: the hash of everything its bytes
// depend on.
func cacheKey(src string, options []string, device string, driver int, nvrtcMajor, nvrtcMinor int) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00driver %d\x00nvrtc %d.%d\x00", src, strings.Join(options, "\x00"), device, driver, nvrtcMajor, nvrtcMinor)
	return hex.EncodeToString(h.Sum(nil))
}

// cachedCompile returns the cubin for src, from the disk cache when
// present, else compiled and stored (atomically; a cache that cannot be
// written only costs the next run a compile).
func (n *nvrtcAPI) cachedCompile(name, src string, options []string, device string, driver int) ([]byte, error) {
	dir := cacheDir()
	var path string
	if dir != "" {
		path = filepath.Join(dir, cacheKey(src, options, device, driver, n.major, n.minor)+".cubin")
		if bin, err := os.ReadFile(path); err == nil && len(bin) > 0 {
			return bin, nil
		}
	}
	bin, err := n.compile(name, src, options)
	if err != nil {
		return nil, err
	}
	if path != "" {
		if os.MkdirAll(dir, 0o755) == nil {
			if f, err := os.CreateTemp(dir, ".tmp-*"); err == nil {
				_, werr := f.Write(bin)
				cerr := f.Close()
				if werr == nil && cerr == nil {
					_ = os.Rename(f.Name(), path)
				} else {
					_ = os.Remove(f.Name())
				}
			}
		}
	}
	return bin, nil
}
