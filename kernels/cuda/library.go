package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// A library is one dlopen'ed shared object.
type library struct {
	name   string // what we looked for, e.g. "libcuda"
	path   string // the file that was opened
	handle uintptr
}

// libSpec says how to find one library: its sonames, newest first, and the
// variable that names its file directly.
type libSpec struct {
	name    string
	sonames []string
	envFile string
}

var (
	specCUDA    = libSpec{"libcuda", []string{"libcuda.so.1", "libcuda.so"}, "MATSURGERY_LIBCUDA"}
	specNVRTC   = libSpec{"libnvrtc", []string{"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}, "MATSURGERY_LIBNVRTC"}
	specCUBLAS  = libSpec{"libcublas", []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so"}, "MATSURGERY_LIBCUBLAS"}
	specCUBLASL = libSpec{"libcublasLt", []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}, "MATSURGERY_LIBCUBLASLT"}
)

// envLibDir names one folder searched before the standard places.
const envLibDir = "MATSURGERY_CUDA_LIB_DIR"

// searchDirs are the usual homes of the CUDA libraries, tried after the
// dynamic loader's own search.
func searchDirs() []string {
	dirs := []string{"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"}
	if m, _ := filepath.Glob("/usr/local/cuda-*/targets/x86_64-linux/lib"); len(m) > 0 {
		slices.Sort(m)
		slices.Reverse(m) // newest version first
		dirs = append(dirs, m...)
	}
	if m, _ := filepath.Glob("/usr/local/cuda-*/lib64"); len(m) > 0 {
		slices.Sort(m)
		slices.Reverse(m)
		dirs = append(dirs, m...)
	}
	return append(dirs, "/usr/lib/x86_64-linux-gnu", "/usr/local/nvidia/lib64", "/usr/lib64", "/usr/lib/wsl/lib")
}

// openLibrary finds and opens a library: the file named by its own
// variable; else each soname in $MATSURGERY_CUDA_LIB_DIR; else each soname
// through the dynamic loader's search; else each soname in the usual
// folders. The error lists every attempt.
func openLibrary(s libSpec) (*library, error) {
	var tried []string
	try := func(path string) *library {
		h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", path, err))
			return nil
		}
		abs := path
		if !strings.Contains(path, "/") {
			abs = loadedPath(path)
		}
		return &library{name: s.name, path: abs, handle: h}
	}
	if f := os.Getenv(s.envFile); f != "" {
		if l := try(f); l != nil {
			return l, nil
		}
		return nil, fmt.Errorf("%s: $%s=%s could not be opened: %s", s.name, s.envFile, f, strings.Join(tried, "; "))
	}
	if d := os.Getenv(envLibDir); d != "" {
		for _, so := range s.sonames {
			if p := filepath.Join(d, so); fileExists(p) {
				if l := try(p); l != nil {
					return l, nil
				}
			}
		}
		tried = append(tried, fmt.Sprintf("$%s=%s: no usable %s", envLibDir, d, s.sonames[0]))
	}
	for _, so := range s.sonames {
		if l := try(so); l != nil {
			return l, nil
		}
	}
	for _, d := range searchDirs() {
		for _, so := range s.sonames {
			if p := filepath.Join(d, so); fileExists(p) {
				if l := try(p); l != nil {
					return l, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("%s not found (set $%s to the file or $%s to its folder); tried: %s",
		s.name, s.envFile, envLibDir, strings.Join(tried, "; "))
}

// loadedPath names the file the dynamic loader opened for soname (e.g.
// libcuda.so.1 → /usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05), read
// from /proc/self/maps; soname itself with a note when it cannot tell.
func loadedPath(soname string) string {
	stem := soname[:strings.Index(soname, ".so")+len(".so")] // libcuda.so
	maps, err := os.ReadFile("/proc/self/maps")
	if err == nil {
		for _, line := range strings.Split(string(maps), "\n") {
			i := strings.Index(line, "/")
			if i < 0 {
				continue
			}
			p := line[i:]
			if base := filepath.Base(p); base == stem || strings.HasPrefix(base, stem+".") {
				return p
			}
		}
	}
	return soname + " (found by the loader)"
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// sym returns the address of the first of names the library exports.
func (l *library) sym(names ...string) (uintptr, error) {
	for _, n := range names {
		if p, err := purego.Dlsym(l.handle, n); err == nil && p != 0 {
			return p, nil
		}
	}
	return 0, fmt.Errorf("%s (%s) exports none of %s", l.name, l.path, strings.Join(names, ", "))
}

// symbols resolves a table of function pointers; each entry lists
// alternative names, preferred first. Every missing name is reported.
func (l *library) symbols(table map[*uintptr][]string) error {
	var errs []error
	for p, names := range table {
		a, err := l.sym(names...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*p = a
	}
	return errors.Join(errs...)
}

// call runs the C function fn with integer or pointer arguments and
// returns its int result (a status code for every function used here).
//
//go:uintptrescapes
func call(fn uintptr, args ...uintptr) int32 {
	r, _, _ := purego.SyscallN(fn, args...)
	return int32(r)
}

// cString reads a NUL-terminated C string.
func cString(p uintptr) string {
	if p == 0 {
		return ""
	}
	// p points into C memory; reinterpret the variable's bits as a
	// pointer rather than converting the uintptr (which vet rejects).
	base := *(**byte)(unsafe.Pointer(&p))
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(base), n)) != 0 {
		n++
	}
	return string(unsafe.Slice(base, n))
}

// cStr returns a NUL-terminated copy of s for C.
func cStr(s string) []byte { return append([]byte(s), 0) }

// libs holds the libraries, opened once per process.
var libs struct {
	once  sync.Once
	err   error
	drv   *driverAPI
	rtc   *nvrtcAPI
	blas  *cublasAPI
	paths []string
}

// loadLibraries opens the driver, NVRTC and cuBLAS (with cuBLASLt) and
// resolves every function the backend calls. It never panics.
func loadLibraries() (err error) {
	libs.once.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				libs.err = fmt.Errorf("loading the CUDA libraries panicked: %v", r)
			}
		}()
		libs.drv, libs.err = loadDriver()
		if libs.err != nil {
			return
		}
		libs.paths = append(libs.paths, libs.drv.lib.path)
		libs.rtc, libs.err = loadNVRTC()
		if libs.err != nil {
			return
		}
		libs.paths = append(libs.paths, libs.rtc.lib.path)
		libs.blas, libs.err = loadCUBLAS()
		if libs.err != nil {
			return
		}
		libs.paths = append(libs.paths, libs.blas.lt.path, libs.blas.lib.path)
	})
	return libs.err
}
