package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/matsurgery/matsurgery/kernels"
)

// NCCL (the NVIDIA collective communications library) joins the backends
// of several GPUs of one host into a Group, for data-parallel training:
// each rank computes its share, and the gradients are summed across the
// ranks by an all-reduce before the identical optimiser step. libnccl.so.2
// is opened with purego like the CUDA libraries: the file named by
// $MATSURGERY_NCCL_LIB, else $MATSURGERY_CUDA_LIB_DIR, the dynamic loader's
// search, the usual CUDA folders, and the nvidia/nccl/lib folder of
// Python's site-packages (where PyTorch's nvidia-nccl wheel puts it).

var specNCCL = libSpec{"libnccl", []string{"libnccl.so.2", "libnccl.so"}, "MATSURGERY_NCCL_LIB"}

// envNVLS is NCCL's switch for NVLink SHARP (multicast) collectives; a
// Group turns it off unless the user has set it.
const envNVLS = "NCCL_NVLS_ENABLE"

// NCCL's enums (nccl.h).
const (
	ncclSuccess = 0
	ncclFloat32 = 7
	ncclSum     = 0
)

// ncclAPI holds the NCCL functions a Group calls.
type ncclAPI struct {
	lib     *library
	version int // e.g. 22703 for 2.27.3

	getVersion, getErrorString, getLastError      uintptr
	commInitAll, commDestroy, commAbort           uintptr
	commGetAsyncError, commCount, commUserRank    uintptr
	groupStart, groupEnd, allReduce, commCuDevice uintptr
}

// nccl is the library once opened; a failed attempt is not kept, so a
// later Group (after the user fixed the environment) tries again.
var nccl struct {
	mu  sync.Mutex
	api *ncclAPI
}

// loadNCCL opens libnccl and resolves its functions.
func loadNCCL() (*ncclAPI, error) {
	nccl.mu.Lock()
	defer nccl.mu.Unlock()
	if nccl.api != nil {
		return nccl.api, nil
	}
	lib, err := openNCCL()
	if err != nil {
		return nil, err
	}
	n := &ncclAPI{lib: lib}
	err = lib.symbols(map[*uintptr][]string{
		&n.getVersion:        {"ncclGetVersion"},
		&n.getErrorString:    {"ncclGetErrorString"},
		&n.commInitAll:       {"ncclCommInitAll"},
		&n.commDestroy:       {"ncclCommDestroy"},
		&n.commAbort:         {"ncclCommAbort"},
		&n.commGetAsyncError: {"ncclCommGetAsyncError"},
		&n.commCount:         {"ncclCommCount"},
		&n.commUserRank:      {"ncclCommUserRank"},
		&n.commCuDevice:      {"ncclCommCuDevice"},
		&n.groupStart:        {"ncclGroupStart"},
		&n.groupEnd:          {"ncclGroupEnd"},
		&n.allReduce:         {"ncclAllReduce"},
	})
	if err != nil {
		return nil, err
	}
	n.getLastError, _ = lib.sym("ncclGetLastError") // NCCL ≥ 2.13
	var v int32
	if err := n.check(call(n.getVersion, uintptr(unsafe.Pointer(&v))), "ncclGetVersion", 0); err != nil {
		return nil, err
	}
	n.version = int(v)
	nccl.api = n
	return n, nil
}

// openNCCL finds libnccl the way openLibrary finds the CUDA libraries, and
// then in Python's site-packages.
func openNCCL() (*library, error) {
	lib, err := openLibrary(specNCCL)
	if err == nil || os.Getenv(specNCCL.envFile) != "" {
		return lib, err
	}
	var tried []string
	for _, d := range pythonNCCLDirs() {
		for _, so := range specNCCL.sonames {
			p := filepath.Join(d, so)
			if !fileExists(p) {
				continue
			}
			h, derr := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if derr == nil {
				return &library{name: specNCCL.name, path: p, handle: h}, nil
			}
			tried = append(tried, fmt.Sprintf("%s: %v", p, derr))
		}
	}
	if len(tried) > 0 {
		return nil, fmt.Errorf("%w; in Python's site-packages: %s", err, strings.Join(tried, "; "))
	}
	return nil, fmt.Errorf("%w; nor in Python's site-packages (nvidia/nccl/lib)", err)
}

// pythonNCCLDirs lists the nvidia/nccl/lib folders (and the CUDA 13
// wheels' nvidia/cu13/lib) of the usual Python installations: the active
// virtual or conda environment first, then that of each python3 on $PATH,
// the user's, the system's and /opt/conda, newest Python first in each.
func pythonNCCLDirs() []string {
	var roots []string
	for _, env := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if p := os.Getenv(env); p != "" {
			roots = append(roots, filepath.Join(p, "lib"))
		}
	}
	for _, bin := range filepath.SplitList(os.Getenv("PATH")) {
		if bin != "" && fileExists(filepath.Join(bin, "python3")) {
			roots = append(roots, filepath.Join(filepath.Dir(bin), "lib")) // <prefix>/bin/python3 → <prefix>/lib
		}
	}
	if h, err := os.UserHomeDir(); err == nil {
		roots = append(roots, filepath.Join(h, ".local", "lib"))
	}
	roots = append(roots, "/usr/local/lib", "/usr/lib", "/usr/lib64", "/opt/conda/lib")
	var dirs []string
	for _, r := range roots {
		var sites []string
		for _, pat := range []string{"python3*/site-packages", "python3*/dist-packages"} {
			m, _ := filepath.Glob(filepath.Join(r, pat))
			sites = append(sites, m...)
		}
		if r == "/usr/lib" {
			sites = append(sites, "/usr/lib/python3/dist-packages")
		}
		slices.Sort(sites)
		slices.Reverse(sites)
		for _, s := range sites {
			dirs = append(dirs, filepath.Join(s, "nvidia", "nccl", "lib"), filepath.Join(s, "nvidia", "cu13", "lib"))
		}
	}
	return uniqueStrings(dirs)
}

// uniqueStrings keeps the first of each repeated string, in order.
func uniqueStrings(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// NCCLError is a failed NCCL call.
type NCCLError struct {
	Call   string // the function and what it was doing
	Code   int    // ncclResult_t
	Msg    string // ncclGetErrorString
	Detail string // ncclGetLastError, when the library has more to say
}

func (e *NCCLError) Error() string {
	s := fmt.Sprintf("%s: NCCL error %d: %s", e.Call, e.Code, e.Msg)
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// check turns an ncclResult_t into an error; comm (0 for none) is asked
// for its last error message.
func (n *ncclAPI) check(res int32, what string, comm uintptr) error {
	if res == ncclSuccess {
		return nil
	}
	e := &NCCLError{Call: what, Code: int(res), Msg: cString(callPtr(n.getErrorString, uintptr(res)))}
	if n.getLastError != 0 {
		e.Detail = strings.TrimSpace(cString(callPtr(n.getLastError, comm)))
	}
	return e
}

// callPtr runs a C function that returns a pointer.
//
//go:uintptrescapes
func callPtr(fn uintptr, args ...uintptr) uintptr {
	r, _, _ := purego.SyscallN(fn, args...)
	return r
}

// versionString is "2.27.3" for NCCL's code 22703 (the X·1000+Y·100+Z
// codes of versions before 2.9 too).
func (n *ncclAPI) versionString() string {
	v := n.version
	if v >= 10000 {
		return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
	}
	return fmt.Sprintf("%d.%d.%d", v/1000, v/100%10, v%100)
}

// NCCLVersion opens libnccl and returns its version and file, e.g.
// "2.27.3", "/usr/lib/…/libnccl.so.2".
func NCCLVersion() (version, path string, err error) {
	n, err := loadNCCL()
	if err != nil {
		return "", "", fmt.Errorf("cuda: %w", err)
	}
	return n.versionString(), n.lib.path, nil
}

// Group is the CUDA backends of several devices of one host (a rank each,
// each with its own owner thread, context and stream), joined by NCCL
// communicators. Rank r's work goes to Backend(r) as to any backend;
// AllReduceSum sums tensors across the ranks. Its methods may be called
// from any goroutine, one at a time.
type Group struct {
	api     *ncclAPI
	ranks   []*Backend
	devices []int
	comms   []uintptr
	broken  error // set when a collective failed part-way: the communicators are aborted
	closed  bool
}

// NewGroup opens a backend on each of the given devices (distinct
// ordinals, e.g. 0 and 1) and joins them with NCCL communicators
// (ncclCommInitAll). It sets NCCL_NVLS_ENABLE=0 in the environment unless
// it is already set: multicast (NVLS) collectives are left off. Without
// libnccl the error says so in its first words.
func NewGroup(devices []int) (*Group, error) {
	if len(devices) == 0 {
		return nil, errors.New("cuda: a group needs at least one device")
	}
	seen := map[int]bool{}
	for _, d := range devices {
		if d < 0 {
			return nil, fmt.Errorf("cuda: group devices %v: negative ordinal %d", devices, d)
		}
		if seen[d] {
			return nil, fmt.Errorf("cuda: group devices %v: device %d twice", devices, d)
		}
		seen[d] = true
	}
	if _, set := os.LookupEnv(envNVLS); !set {
		if err := os.Setenv(envNVLS, "0"); err != nil {
			return nil, fmt.Errorf("cuda: setting %s=0: %w", envNVLS, err)
		}
	}
	if err := loadLibraries(); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	api, err := loadNCCL()
	if err != nil {
		return nil, fmt.Errorf("%d GPU(s) need libnccl.so.2 (NCCL: the libnccl2 package, or PyTorch's nvidia-nccl wheel) for the gradient all-reduce: %w", len(devices), err)
	}
	g := &Group{api: api, devices: slices.Clone(devices)}
	for _, d := range devices {
		be, err := New(d)
		if err != nil {
			g.closeBackends()
			return nil, fmt.Errorf("cuda group %v: %w", devices, err)
		}
		g.ranks = append(g.ranks, be.(*Backend))
	}
	if err := g.initComms(); err != nil {
		if g.comms != nil {
			_ = g.eachComm("ncclCommDestroy", g.api.commDestroy)
		}
		g.closeBackends()
		return nil, fmt.Errorf("cuda group %v: %w", devices, err)
	}
	return g, nil
}

// initComms creates the communicators with ncclCommInitAll, on a thread
// of its own: NCCL switches that thread's current device while it works,
// which must not disturb the owners' contexts. The thread ends with it.
func (g *Group) initComms() error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		comms := make([]uintptr, len(g.devices))
		devs := make([]int32, len(g.devices))
		for i, d := range g.devices {
			devs[i] = int32(d)
		}
		res := call(g.api.commInitAll, uintptr(unsafe.Pointer(&comms[0])), uintptr(len(devs)), uintptr(unsafe.Pointer(&devs[0])))
		runtime.KeepAlive(devs)
		if err := g.api.check(res, fmt.Sprintf("ncclCommInitAll(%d devices)", len(devs)), 0); err != nil {
			done <- err
			return
		}
		g.comms = comms
		done <- nil
	}()
	if err := <-done; err != nil {
		return err
	}
	// Each communicator must be the rank and device asked for.
	for r, c := range g.comms {
		var rank, count, dev int32
		for _, q := range []struct {
			fn  uintptr
			dst *int32
			nm  string
		}{{g.api.commUserRank, &rank, "ncclCommUserRank"}, {g.api.commCount, &count, "ncclCommCount"}, {g.api.commCuDevice, &dev, "ncclCommCuDevice"}} {
			if err := g.api.check(call(q.fn, c, uintptr(unsafe.Pointer(q.dst))), q.nm, c); err != nil {
				return err
			}
		}
		if int(rank) != r || int(count) != len(g.comms) || int(dev) != g.devices[r] {
			return fmt.Errorf("ncclCommInitAll: communicator %d is rank %d of %d on device %d, want rank %d of %d on device %d",
				r, rank, count, dev, r, len(g.comms), g.devices[r])
		}
	}
	return nil
}

// Size is the number of ranks.
func (g *Group) Size() int { return len(g.ranks) }

// Backend returns rank r's backend (a *Backend).
func (g *Group) Backend(r int) kernels.Backend { return g.ranks[r] }

// Devices returns the device ordinal of each rank.
func (g *Group) Devices() []int { return slices.Clone(g.devices) }

// Name is "cuda group of 2 (cuda:0 (…), cuda:1 (…)), NCCL 2.27.3".
func (g *Group) Name() string {
	names := make([]string, len(g.ranks))
	for i, be := range g.ranks {
		names[i] = be.Name()
	}
	return fmt.Sprintf("cuda group of %d (%s), NCCL %s", len(g.ranks), strings.Join(names, ", "), g.api.versionString())
}

// AllReduceSum replaces, in place, every tensor perRank[r][i] by the sum
// over the ranks s of perRank[s][i]: perRank[r] lists rank r's tensors
// (F32, of Backend(r)), and the i-th tensors of all ranks hold the same
// number of elements. The sums are enqueued on each rank's stream (one
// NCCL group a rank), so they are ordered after the work already queued
// on that rank and before what follows; Sync or Download waits for them.
// Every operand is checked before anything is enqueued, so a bad call
// leaves the group usable; a failure once ranks have enqueued aborts the
// communicators (the group is then unusable).
func (g *Group) AllReduceSum(perRank [][]kernels.Tensor) error {
	if err := g.usable(); err != nil {
		return err
	}
	if len(perRank) != len(g.ranks) {
		return fmt.Errorf("nccl all-reduce: %d lists of tensors for %d ranks", len(perRank), len(g.ranks))
	}
	count := len(perRank[0])
	ts := make([][]*Tensor, len(g.ranks))
	for r, list := range perRank {
		if len(list) != count {
			return fmt.Errorf("nccl all-reduce: rank %d has %d tensors, rank 0 has %d", r, len(list), count)
		}
		ts[r] = make([]*Tensor, count)
		for i, t := range list {
			ct, err := g.ranks[r].tensor(t, fmt.Sprintf("nccl all-reduce: rank %d tensor %d", r, i))
			if err != nil {
				return err
			}
			if ct.dtype != kernels.F32 {
				return fmt.Errorf("nccl all-reduce: rank %d tensor %d %v is %v, want f32", r, i, ct.shape, ct.dtype)
			}
			ts[r][i] = ct
			if ct.n != ts[0][i].n {
				return fmt.Errorf("nccl all-reduce: tensor %d has %d elements %v on rank %d and %d %v on rank 0",
					i, ct.n, ct.shape, r, ts[0][i].n, ts[0][i].shape)
			}
		}
		for i := range list {
			for j := range i {
				if overlaps(ts[r][i], ts[r][j]) {
					return fmt.Errorf("nccl all-reduce: rank %d tensors %d and %d share memory", r, j, i)
				}
			}
		}
	}
	if count == 0 {
		return nil
	}
	errs := make([]error, len(g.ranks))
	var wg sync.WaitGroup
	for r := range g.ranks {
		wg.Go(func() { errs[r] = g.enqueueSum(r, ts[r]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		g.abort(err)
		return fmt.Errorf("nccl all-reduce of %d tensor(s) over %d ranks: %w", count, len(g.ranks), err)
	}
	return nil
}

// overlaps reports whether two tensors share any byte.
func overlaps(a, b *Tensor) bool {
	return a.ptr < b.ptr+uint64(b.bytes()) && b.ptr < a.ptr+uint64(a.bytes())
}

// enqueueSum issues rank r's all-reduces on its owner thread, as one NCCL
// group.
func (g *Group) enqueueSum(r int, ts []*Tensor) error {
	be, comm, api := g.ranks[r], g.comms[r], g.api
	err := be.do("nccl all-reduce", func() error {
		if err := api.check(call(api.groupStart), "ncclGroupStart", comm); err != nil {
			return err
		}
		var first error
		for i, t := range ts {
			res := call(api.allReduce, uintptr(t.ptr), uintptr(t.ptr), uintptr(t.n), ncclFloat32, ncclSum, comm, be.stream)
			if err := api.check(res, fmt.Sprintf("ncclAllReduce(tensor %d %v)", i, t.shape), comm); err != nil && first == nil {
				first = err
			}
		}
		// The group is closed even after a failed call, so that the
		// thread's NCCL state is clean.
		if err := api.check(call(api.groupEnd), "ncclGroupEnd", comm); err != nil && first == nil {
			first = err
		}
		return first
	})
	if err != nil {
		return fmt.Errorf("rank %d (device %d): %w", r, g.devices[r], err)
	}
	return nil
}

// Sync waits for every rank's queued work, the collectives included, and
// asks each communicator for an asynchronous error.
func (g *Group) Sync() error {
	if err := g.usable(); err != nil {
		return err
	}
	errs := make([]error, len(g.ranks))
	var wg sync.WaitGroup
	for r, be := range g.ranks {
		wg.Go(func() {
			if err := be.Sync(); err != nil {
				errs[r] = fmt.Errorf("rank %d: %w", r, err)
				return
			}
			var async int32
			err := g.api.check(call(g.api.commGetAsyncError, g.comms[r], uintptr(unsafe.Pointer(&async))), "ncclCommGetAsyncError", g.comms[r])
			if err == nil {
				err = g.api.check(async, "asynchronous NCCL error", g.comms[r])
			}
			if err != nil {
				errs[r] = fmt.Errorf("rank %d: %w", r, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (g *Group) usable() error {
	switch {
	case g.closed:
		return errors.New("cuda group: closed")
	case g.broken != nil:
		return fmt.Errorf("cuda group: unusable after an earlier failed collective: %w", g.broken)
	}
	return nil
}

// abort tears the communicators down after a collective failed on some
// ranks only: the ranks that did enqueue would otherwise wait forever.
func (g *Group) abort(cause error) {
	g.broken = cause
	_ = g.eachComm("ncclCommAbort", g.api.commAbort)
	g.comms = nil
}

// eachComm calls fn(comm) for every rank at once, each on its owner
// thread (one thread a rank, as NCCL expects of a process that drives
// several devices without ncclGroupStart around the calls).
func (g *Group) eachComm(what string, fn uintptr) error {
	errs := make([]error, len(g.comms))
	var wg sync.WaitGroup
	for r, c := range g.comms {
		wg.Go(func() {
			errs[r] = g.ranks[r].do(what, func() error {
				return g.api.check(call(fn, c), fmt.Sprintf("%s(rank %d)", what, r), 0)
			})
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close waits for the ranks, destroys the communicators and closes every
// backend. Closing twice is harmless.
func (g *Group) Close() error {
	if g.closed {
		return nil
	}
	var errs []error
	if g.broken == nil {
		if err := g.Sync(); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, g.eachComm("ncclCommDestroy", g.api.commDestroy))
		g.comms = nil
	}
	g.closed = true
	errs = append(errs, g.closeBackends())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cuda group close: %w", err)
	}
	return nil
}

func (g *Group) closeBackends() error {
	var errs []error
	for _, be := range g.ranks {
		errs = append(errs, be.Close())
	}
	return errors.Join(errs...)
}
