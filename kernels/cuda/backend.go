// Package cuda is the NVIDIA GPU implementation of kernels.Backend, without
// cgo: the CUDA driver, NVRTC and cuBLAS are opened with purego at run time
// (CGO_ENABLED=0 builds work), the kernels are CUDA C sources embedded in
// the binary and compiled by NVRTC for the device at first use, with the
// result cached on disk.
//
// A CUDA context is current on one OS thread at a time, so every CUDA call
// of a Backend runs on one goroutine locked to its thread (the owner);
// methods hand it closures and wait. A Backend may therefore be called from
// any goroutine, one call at a time.
//
// Libraries are found by soname, then in the usual CUDA folders; set
// MATSURGERY_CUDA_LIB_DIR to a folder holding them, or MATSURGERY_LIBCUDA,
// MATSURGERY_LIBNVRTC, MATSURGERY_LIBCUBLAS, MATSURGERY_LIBCUBLASLT to the
// files. Compiled kernels go to MATSURGERY_CUDA_CACHE (default
// <user cache dir>/matsurgery/cuda; "off" disables the cache).
package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"unsafe"

	"github.com/matsurgery/matsurgery/kernels"
)

// Backend runs kernels.Backend operations on one CUDA device.
type Backend struct {
	drv  *driverAPI
	rtc  *nvrtcAPI
	blas *cublasAPI

	ordinal          int
	dev              int32
	devName          string
	ccMajor, ccMinor int
	sms              int
	smemOptin        int
	driverVersion    int

	jobs   chan func()
	closed atomic.Bool

	// Owned by the owner goroutine.
	ctx     uintptr
	stream  uintptr
	handle  uintptr // cuBLAS
	modules map[string]*module
	live    map[*Tensor]struct{}

	inUse, peak atomic.Int64 // bytes of live tensors, and the most at any time

	tid  atomic.Int64 // the owner's OS thread (0 until it starts)
	prof *profile     // MATSURGERY_CUDA_PROFILE's account, or nil

	flashAttention bool // bf16 attention on flash_attention.cu (MATSURGERY_CUDA_ATTENTION at creation, on unless "blocked")

	pcgJump map[int]uint64 // Dropout's jump tables by row length (device pointers, owner goroutine; freed at Close)
}

var _ kernels.Backend = (*Backend)(nil)

// New opens device deviceIndex (0 is the first GPU). It fails with a plain
// error when there is no usable GPU or a library is missing (see
// Available). The result is a *Backend.
func New(deviceIndex int) (kernels.Backend, error) {
	if err := loadLibraries(); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	flash, err := attentionModeFromEnv()
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	be := &Backend{drv: libs.drv, rtc: libs.rtc, blas: libs.blas, ordinal: deviceIndex,
		jobs: make(chan func()), modules: map[string]*module{}, live: map[*Tensor]struct{}{}, prof: newProfile(),
		flashAttention: flash}
	started := make(chan error)
	go be.owner(started)
	if err := <-started; err != nil {
		return nil, fmt.Errorf("cuda: device %d: %w", deviceIndex, err)
	}
	return be, nil
}

// owner runs every CUDA call of be on one locked OS thread.
func (be *Backend) owner(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	be.tid.Store(threadID())
	if err := be.setup(); err != nil {
		be.teardown()
		started <- err
		return
	}
	started <- nil
	for f := range be.jobs {
		f()
	}
}

func (be *Backend) setup() error {
	d := be.drv
	if err := d.cuInit(); err != nil {
		return err
	}
	n, err := d.deviceCount()
	if err != nil {
		return err
	}
	if be.ordinal < 0 || be.ordinal >= n {
		return fmt.Errorf("no such device: %d device(s) present", n)
	}
	if be.dev, err = d.device(be.ordinal); err != nil {
		return err
	}
	if be.devName, err = d.deviceName(be.dev); err != nil {
		return err
	}
	for _, a := range []struct {
		dst  *int
		attr int
	}{{&be.ccMajor, attrCCMajor}, {&be.ccMinor, attrCCMinor}, {&be.sms, attrMultiprocessorCount}, {&be.smemOptin, attrMaxSharedPerBlockOptin}} {
		if *a.dst, err = d.attribute(be.dev, a.attr); err != nil {
			return err
		}
	}
	if be.driverVersion, err = d.version(); err != nil {
		return err
	}
	if err := d.check(call(d.primaryCtxRetain, uintptr(unsafe.Pointer(&be.ctx)), uintptr(be.dev)), "cuDevicePrimaryCtxRetain"); err != nil {
		return err
	}
	if err := d.check(call(d.ctxSetCurrent, be.ctx), "cuCtxSetCurrent"); err != nil {
		return err
	}
	if err := d.check(call(d.streamCreate, uintptr(unsafe.Pointer(&be.stream)), streamNonBlocking), "cuStreamCreate"); err != nil {
		return err
	}
	// Keep freed memory in the stream-ordered pool instead of returning it
	// to the driver at every synchronisation.
	if d.memAllocAsync != 0 && d.deviceGetDefaultMemPool != 0 && d.memPoolSetAttribute != 0 {
		if ok, _ := d.attribute(be.dev, attrMemoryPoolsSupported); ok == 0 {
			d.memAllocAsync, d.memFreeAsync = 0, 0
		} else {
			var pool uintptr
			if d.check(call(d.deviceGetDefaultMemPool, uintptr(unsafe.Pointer(&pool)), uintptr(be.dev)), "cuDeviceGetDefaultMemPool") == nil {
				threshold := new(uint64)
				*threshold = ^uint64(0)
				_ = d.check(call(d.memPoolSetAttribute, pool, memPoolAttrReleaseThreshold, uintptr(unsafe.Pointer(threshold))), "cuMemPoolSetAttribute")
			}
		}
	}
	be.handle, err = be.blas.newHandle(be.stream)
	return err
}

func (be *Backend) teardown() {
	d := be.drv
	for _, m := range be.modules {
		call(d.moduleUnload, m.handle)
	}
	be.modules = nil
	if be.handle != 0 {
		call(be.blas.destroy, be.handle)
		be.handle = 0
	}
	if be.stream != 0 {
		call(d.streamSynchronize, be.stream)
		for t := range be.live {
			_ = d.free(t.ptr, be.stream)
		}
		for _, p := range be.pcgJump {
			_ = d.free(p, be.stream)
		}
		call(d.streamSynchronize, be.stream)
		call(d.streamDestroy, be.stream)
		be.stream = 0
	}
	be.live = nil
	be.pcgJump = nil
	if be.ctx != 0 {
		call(d.primaryCtxRelease, uintptr(be.dev))
		be.ctx = 0
	}
}

// do runs f on the owner goroutine and returns its error: directly when
// the caller is the owner (inside Pinned, or an operation's own closure),
// else handed over and waited for. A panic in f (a bug) comes back as an
// error rather than killing the owner.
func (be *Backend) do(what string, f func() error) error {
	if be.closed.Load() {
		return fmt.Errorf("cuda %s: backend is closed", what)
	}
	if be.prof != nil && what != pinnedOp && what != "close" {
		inner := f
		f = func() error { return be.prof.time(be, what, inner) }
	}
	if be.onOwner() {
		return runJob(what, f)
	}
	done := make(chan error, 1)
	be.jobs <- func() { done <- runJob(what, f) }
	return <-done
}

// Name is "cuda:N (device name)".
func (be *Backend) Name() string { return fmt.Sprintf("cuda:%d (%s)", be.ordinal, be.devName) }

// Close waits for queued work, frees every tensor still alive, and
// releases the device. Later calls fail.
func (be *Backend) Close() error {
	if be.closed.Load() {
		return nil
	}
	if be.prof != nil {
		be.prof.report(be)
	}
	err := be.do("close", func() error {
		err := be.drv.syncStream(be.stream)
		be.teardown()
		return err
	})
	be.closed.Store(true)
	close(be.jobs)
	return err
}

// Sync waits until every queued operation has finished; errors of
// asynchronous work (a failed kernel) surface here.
func (be *Backend) Sync() error {
	return be.do("sync", func() error { return be.drv.syncStream(be.stream) })
}

// Tensor is a CUDA tensor: a device pointer with its shape. A view (from
// Reshape) shares its owner's memory.
type Tensor struct {
	be    *Backend
	ptr   uint64
	shape []int
	dtype kernels.DType
	n     int
	owner *Tensor // nil for an owner
	freed bool
}

// Shape returns a copy of the dimensions.
func (t *Tensor) Shape() []int { return slices.Clone(t.shape) }

// DType is the element type.
func (t *Tensor) DType() kernels.DType { return t.dtype }

// Len is the number of elements.
func (t *Tensor) Len() int { return t.n }

func (t *Tensor) bytes() int { return t.n * t.dtype.Size() }

// bf is the kernels' dtype flag: 1 for BF16, 0 for F32 (and for nil).
func (t *Tensor) bf() int {
	if t != nil && t.dtype == kernels.BF16 {
		return 1
	}
	return 0
}

func checkShape(shape []int) (int, error) {
	if len(shape) == 0 {
		return 0, errors.New("a tensor needs at least one dimension")
	}
	n := 1
	for _, d := range shape {
		if d <= 0 {
			return 0, fmt.Errorf("shape %v has a dimension ≤ 0", shape)
		}
		if n > (1<<62)/d {
			return 0, fmt.Errorf("shape %v is too large", shape)
		}
		n *= d
	}
	return n, nil
}

func checkDType(dt kernels.DType) error {
	if dt != kernels.F32 && dt != kernels.BF16 {
		return fmt.Errorf("unsupported dtype %v", dt)
	}
	return nil
}

// alloc makes a tensor on the owner goroutine.
func (be *Backend) alloc(dt kernels.DType, shape []int, n int) (*Tensor, error) {
	t := &Tensor{be: be, shape: slices.Clone(shape), dtype: dt, n: n}
	p, err := be.drv.alloc(uint64(t.bytes()), be.stream)
	if err != nil {
		return nil, fmt.Errorf("%v tensor %v: %w", dt, shape, err)
	}
	t.ptr = p
	be.live[t] = struct{}{}
	now := be.inUse.Add(int64(t.bytes()))
	for {
		old := be.peak.Load()
		if now <= old || be.peak.CompareAndSwap(old, now) {
			break
		}
	}
	return t, nil
}

// Alloc returns a tensor with undefined contents.
func (be *Backend) Alloc(dt kernels.DType, shape ...int) (kernels.Tensor, error) {
	if err := checkDType(dt); err != nil {
		return nil, fmt.Errorf("cuda alloc: %w", err)
	}
	n, err := checkShape(shape)
	if err != nil {
		return nil, fmt.Errorf("cuda alloc: %w", err)
	}
	var t *Tensor
	err = be.do("alloc", func() error {
		var err error
		t, err = be.alloc(dt, shape, n)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cuda alloc: %w", err)
	}
	return t, nil
}

// Upload copies host values into a new tensor; to BF16 they are rounded
// to nearest even on the host first.
func (be *Backend) Upload(host []float32, dt kernels.DType, shape ...int) (kernels.Tensor, error) {
	if err := checkDType(dt); err != nil {
		return nil, fmt.Errorf("cuda upload: %w", err)
	}
	n, err := checkShape(shape)
	if err != nil {
		return nil, fmt.Errorf("cuda upload: %w", err)
	}
	if n != len(host) {
		return nil, fmt.Errorf("cuda upload: shape %v holds %d elements, host slice has %d", shape, n, len(host))
	}
	src := unsafe.Pointer(unsafe.SliceData(host))
	var keep any = host
	if dt == kernels.BF16 {
		bits := roundBF16Slice(host)
		src, keep = unsafe.Pointer(unsafe.SliceData(bits)), bits
	}
	t, err := be.upload(src, dt, shape, n)
	runtime.KeepAlive(keep)
	if err != nil {
		return nil, fmt.Errorf("cuda upload: %w", err)
	}
	return t, nil
}

// UploadBF16 copies raw bf16 bits into a new BF16 tensor.
func (be *Backend) UploadBF16(host []uint16, shape ...int) (kernels.Tensor, error) {
	n, err := checkShape(shape)
	if err != nil {
		return nil, fmt.Errorf("cuda upload bf16: %w", err)
	}
	if n != len(host) {
		return nil, fmt.Errorf("cuda upload bf16: shape %v holds %d elements, host slice has %d", shape, n, len(host))
	}
	t, err := be.upload(unsafe.Pointer(unsafe.SliceData(host)), kernels.BF16, shape, n)
	runtime.KeepAlive(host)
	if err != nil {
		return nil, fmt.Errorf("cuda upload bf16: %w", err)
	}
	return t, nil
}

func (be *Backend) upload(src unsafe.Pointer, dt kernels.DType, shape []int, n int) (*Tensor, error) {
	var t *Tensor
	err := be.do("upload", func() error {
		var err error
		if t, err = be.alloc(dt, shape, n); err != nil {
			return err
		}
		// From pageable memory the copy has left src when the call returns.
		if err = be.drv.htod(t.ptr, src, t.bytes(), be.stream); err != nil {
			be.release(t)
			return err
		}
		return nil
	})
	return t, err
}

// Download waits for queued work and returns the elements as float32
// (BF16 widened exactly).
func (be *Backend) Download(t kernels.Tensor) ([]float32, error) {
	ct, err := be.tensor(t, "download")
	if err != nil {
		return nil, err
	}
	out := make([]float32, ct.n)
	var bits []uint16
	dst := unsafe.Pointer(unsafe.SliceData(out))
	if ct.dtype == kernels.BF16 {
		bits = make([]uint16, ct.n)
		dst = unsafe.Pointer(unsafe.SliceData(bits))
	}
	err = be.do("download", func() error {
		if err := be.drv.dtoh(dst, ct.ptr, ct.bytes(), be.stream); err != nil {
			return err
		}
		return be.drv.syncStream(be.stream)
	})
	runtime.KeepAlive(out)
	runtime.KeepAlive(bits)
	if err != nil {
		return nil, fmt.Errorf("cuda download %v tensor %v: %w", ct.dtype, ct.shape, err)
	}
	if bits != nil {
		widenBF16(out, bits)
	}
	return out, nil
}

// Free releases the tensor's memory (stream-ordered: queued work that uses
// it still runs); on a view it is a no-op. Freeing twice is harmless.
func (be *Backend) Free(t kernels.Tensor) {
	ct, ok := t.(*Tensor)
	if !ok || ct == nil || ct.be != be || ct.owner != nil || ct.freed || be.closed.Load() {
		return
	}
	_ = be.do("free", func() error {
		be.release(ct)
		return nil
	})
}

func (be *Backend) release(t *Tensor) {
	if t.freed {
		return
	}
	t.freed = true
	delete(be.live, t)
	be.inUse.Add(-int64(t.bytes()))
	_ = be.drv.free(t.ptr, be.stream)
}

// Reshape returns a view of t with a new shape of the same element count.
func (be *Backend) Reshape(t kernels.Tensor, shape ...int) (kernels.Tensor, error) {
	ct, err := be.tensor(t, "reshape")
	if err != nil {
		return nil, err
	}
	n, err := checkShape(shape)
	if err != nil {
		return nil, fmt.Errorf("cuda reshape: %w", err)
	}
	if n != ct.n {
		return nil, fmt.Errorf("cuda reshape: %v (%d elements) to %v (%d elements)", ct.shape, ct.n, shape, n)
	}
	owner := ct
	if ct.owner != nil {
		owner = ct.owner
	}
	return &Tensor{be: be, ptr: ct.ptr, shape: slices.Clone(shape), dtype: ct.dtype, n: n, owner: owner}, nil
}

// tensor checks that t is a live tensor of this backend.
func (be *Backend) tensor(t kernels.Tensor, what string) (*Tensor, error) {
	if be.closed.Load() {
		return nil, fmt.Errorf("cuda %s: backend is closed", what)
	}
	ct, ok := t.(*Tensor)
	if !ok || ct == nil {
		if t == nil {
			return nil, fmt.Errorf("cuda: %s is nil", what)
		}
		return nil, fmt.Errorf("cuda: %s is a %T, not a cuda tensor", what, t)
	}
	if ct.be != be {
		return nil, fmt.Errorf("cuda: %s belongs to another backend", what)
	}
	if ct.freed || (ct.owner != nil && ct.owner.freed) {
		return nil, fmt.Errorf("cuda: %s was freed", what)
	}
	return ct, nil
}

// optTensor is tensor for an optional operand: nil gives nil.
func (be *Backend) optTensor(t kernels.Tensor, what string) (*Tensor, error) {
	if t == nil {
		return nil, nil
	}
	if ct, ok := t.(*Tensor); ok && ct == nil {
		return nil, nil
	}
	return be.tensor(t, what)
}

var _ kernels.MemoryReporter = (*Backend)(nil)

// DeviceMemory returns the bytes of the backend's live tensors now and at
// their peak (the allocator's pool may hold more; other processes' use is
// not counted).
func (be *Backend) DeviceMemory() (inUse, peak int64) {
	return be.inUse.Load(), be.peak.Load()
}
