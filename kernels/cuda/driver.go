package cuda

import (
	"fmt"
	"unsafe"
)

// driverAPI holds the CUDA driver functions (libcuda). Names that CUDA
// versioned (the _v2 family; cuEventElapsedTime_v2 since CUDA 12.8) are
// looked up newest first. The context is the device's primary context, so
// the cuCtxCreate v2/v3/v4 renames do not matter.
type driverAPI struct {
	lib *library

	init, driverGetVersion, getErrorString, getErrorName                   uintptr
	deviceGetCount, deviceGet, deviceGetName, deviceGetAttribute           uintptr
	deviceTotalMem, primaryCtxRetain, primaryCtxRelease, ctxSetCurrent     uintptr
	memGetInfo, memAlloc, memFree, memAllocAsync, memFreeAsync             uintptr
	deviceGetDefaultMemPool, memPoolSetAttribute                           uintptr
	memcpyHtoDAsync, memcpyDtoHAsync, memcpyDtoDAsync, memsetD8Async       uintptr
	moduleLoadData, moduleUnload, moduleGetFunction                        uintptr
	funcSetAttribute, funcGetAttribute, launchKernel                       uintptr
	streamCreate, streamDestroy, streamSynchronize                         uintptr
	eventCreate, eventDestroy, eventRecord, eventSynchronize, eventElapsed uintptr
}

// Driver enums used here (cuda.h).
const (
	attrMultiprocessorCount    = 16
	attrL2CacheSize            = 38
	attrCCMajor                = 75
	attrCCMinor                = 76
	attrMaxSharedPerBlockOptin = 97
	attrMemoryPoolsSupported   = 115

	funcAttrSharedSizeBytes  = 1
	funcAttrLocalSizeBytes   = 3
	funcAttrNumRegs          = 4
	funcAttrMaxDynamicShared = 8

	memPoolAttrReleaseThreshold = 4
	streamNonBlocking           = 1
)

func loadDriver() (*driverAPI, error) {
	lib, err := openLibrary(specCUDA)
	if err != nil {
		return nil, err
	}
	d := &driverAPI{lib: lib}
	err = lib.symbols(map[*uintptr][]string{
		&d.init:               {"cuInit"},
		&d.driverGetVersion:   {"cuDriverGetVersion"},
		&d.getErrorString:     {"cuGetErrorString"},
		&d.getErrorName:       {"cuGetErrorName"},
		&d.deviceGetCount:     {"cuDeviceGetCount"},
		&d.deviceGet:          {"cuDeviceGet"},
		&d.deviceGetName:      {"cuDeviceGetName"},
		&d.deviceGetAttribute: {"cuDeviceGetAttribute"},
		&d.deviceTotalMem:     {"cuDeviceTotalMem_v2"},
		&d.primaryCtxRetain:   {"cuDevicePrimaryCtxRetain"},
		&d.primaryCtxRelease:  {"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"},
		&d.ctxSetCurrent:      {"cuCtxSetCurrent"},
		&d.memGetInfo:         {"cuMemGetInfo_v2"},
		&d.memAlloc:           {"cuMemAlloc_v2"},
		&d.memFree:            {"cuMemFree_v2"},
		&d.memcpyHtoDAsync:    {"cuMemcpyHtoDAsync_v2"},
		&d.memcpyDtoHAsync:    {"cuMemcpyDtoHAsync_v2"},
		&d.memcpyDtoDAsync:    {"cuMemcpyDtoDAsync_v2"},
		&d.memsetD8Async:      {"cuMemsetD8Async"},
		&d.moduleLoadData:     {"cuModuleLoadData"},
		&d.moduleUnload:       {"cuModuleUnload"},
		&d.moduleGetFunction:  {"cuModuleGetFunction"},
		&d.funcSetAttribute:   {"cuFuncSetAttribute"},
		&d.funcGetAttribute:   {"cuFuncGetAttribute"},
		&d.launchKernel:       {"cuLaunchKernel"},
		&d.streamCreate:       {"cuStreamCreate"},
		&d.streamDestroy:      {"cuStreamDestroy_v2"},
		&d.streamSynchronize:  {"cuStreamSynchronize"},
		&d.eventCreate:        {"cuEventCreate"},
		&d.eventDestroy:       {"cuEventDestroy_v2"},
		&d.eventRecord:        {"cuEventRecord"},
		&d.eventSynchronize:   {"cuEventSynchronize"},
		&d.eventElapsed:       {"cuEventElapsedTime_v2", "cuEventElapsedTime"},
	})
	if err != nil {
		return nil, err
	}
	// Stream-ordered allocation (CUDA 11.2+) is optional: without it the
	// backend falls back to cuMemAlloc/cuMemFree.
	d.memAllocAsync, _ = lib.sym("cuMemAllocAsync")
	d.memFreeAsync, _ = lib.sym("cuMemFreeAsync")
	d.deviceGetDefaultMemPool, _ = lib.sym("cuDeviceGetDefaultMemPool")
	d.memPoolSetAttribute, _ = lib.sym("cuMemPoolSetAttribute")
	return d, nil
}

// check turns a CUresult into an error naming the call.
func (d *driverAPI) check(res int32, what string) error {
	if res == 0 {
		return nil
	}
	var name, str uintptr
	call(d.getErrorName, uintptr(res), uintptr(unsafe.Pointer(&name)))
	call(d.getErrorString, uintptr(res), uintptr(unsafe.Pointer(&str)))
	return &Error{Call: what, Code: int(res), Name: cString(name), Msg: cString(str)}
}

// Error is a failed CUDA, NVRTC or cuBLAS call.
type Error struct {
	Call string // the function and what it was doing
	Code int    // the library's status code
	Name string // e.g. CUDA_ERROR_OUT_OF_MEMORY
	Msg  string // the library's description
}

func (e *Error) Error() string {
	switch {
	case e.Name != "" && e.Msg != "":
		return fmt.Sprintf("%s: %s (%d): %s", e.Call, e.Name, e.Code, e.Msg)
	case e.Msg != "":
		return fmt.Sprintf("%s: error %d: %s", e.Call, e.Code, e.Msg)
	}
	return fmt.Sprintf("%s: error %d", e.Call, e.Code)
}

func (d *driverAPI) cuInit() error { return d.check(call(d.init, 0), "cuInit") }

func (d *driverAPI) version() (int, error) {
	var v int32
	err := d.check(call(d.driverGetVersion, uintptr(unsafe.Pointer(&v))), "cuDriverGetVersion")
	return int(v), err
}

func (d *driverAPI) deviceCount() (int, error) {
	var n int32
	err := d.check(call(d.deviceGetCount, uintptr(unsafe.Pointer(&n))), "cuDeviceGetCount")
	return int(n), err
}

func (d *driverAPI) device(ordinal int) (int32, error) {
	var dev int32
	err := d.check(call(d.deviceGet, uintptr(unsafe.Pointer(&dev)), uintptr(ordinal)), fmt.Sprintf("cuDeviceGet(%d)", ordinal))
	return dev, err
}

func (d *driverAPI) deviceName(dev int32) (string, error) {
	buf := make([]byte, 256)
	if err := d.check(call(d.deviceGetName, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), uintptr(dev)), "cuDeviceGetName"); err != nil {
		return "", err
	}
	for i, c := range buf {
		if c == 0 {
			return string(buf[:i]), nil
		}
	}
	return string(buf), nil
}

func (d *driverAPI) attribute(dev int32, attr int) (int, error) {
	var v int32
	err := d.check(call(d.deviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(attr), uintptr(dev)), fmt.Sprintf("cuDeviceGetAttribute(%d)", attr))
	return int(v), err
}

func (d *driverAPI) totalMem(dev int32) (uint64, error) {
	var v uint64
	err := d.check(call(d.deviceTotalMem, uintptr(unsafe.Pointer(&v)), uintptr(dev)), "cuDeviceTotalMem")
	return v, err
}

func (d *driverAPI) memInfo() (free, total uint64, err error) {
	err = d.check(call(d.memGetInfo, uintptr(unsafe.Pointer(&free)), uintptr(unsafe.Pointer(&total))), "cuMemGetInfo")
	return
}

// Allocation, copies and launches below are enqueued on stream s.

func (d *driverAPI) alloc(bytes uint64, s uintptr) (uint64, error) {
	var p uint64
	if d.memAllocAsync != 0 && s != 0 {
		err := d.check(call(d.memAllocAsync, uintptr(unsafe.Pointer(&p)), uintptr(bytes), s), fmt.Sprintf("cuMemAllocAsync(%d bytes)", bytes))
		return p, err
	}
	err := d.check(call(d.memAlloc, uintptr(unsafe.Pointer(&p)), uintptr(bytes)), fmt.Sprintf("cuMemAlloc(%d bytes)", bytes))
	return p, err
}

func (d *driverAPI) free(p uint64, s uintptr) error {
	if d.memFreeAsync != 0 && s != 0 {
		return d.check(call(d.memFreeAsync, uintptr(p), s), "cuMemFreeAsync")
	}
	return d.check(call(d.memFree, uintptr(p)), "cuMemFree")
}

func (d *driverAPI) htod(dst uint64, src unsafe.Pointer, bytes int, s uintptr) error {
	return d.check(call(d.memcpyHtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), s), fmt.Sprintf("cuMemcpyHtoDAsync(%d bytes)", bytes))
}

func (d *driverAPI) dtoh(dst unsafe.Pointer, src uint64, bytes int, s uintptr) error {
	return d.check(call(d.memcpyDtoHAsync, uintptr(dst), uintptr(src), uintptr(bytes), s), fmt.Sprintf("cuMemcpyDtoHAsync(%d bytes)", bytes))
}

func (d *driverAPI) dtod(dst, src uint64, bytes int, s uintptr) error {
	return d.check(call(d.memcpyDtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), s), fmt.Sprintf("cuMemcpyDtoDAsync(%d bytes)", bytes))
}

func (d *driverAPI) syncStream(s uintptr) error {
	return d.check(call(d.streamSynchronize, s), "cuStreamSynchronize")
}

func (d *driverAPI) newEvent() (uintptr, error) {
	var e uintptr
	err := d.check(call(d.eventCreate, uintptr(unsafe.Pointer(&e)), 0), "cuEventCreate")
	return e, err
}

func (d *driverAPI) record(e, s uintptr) error {
	return d.check(call(d.eventRecord, e, s), "cuEventRecord")
}

// elapsed waits for end and returns the milliseconds between two events.
func (d *driverAPI) elapsed(start, end uintptr) (float32, error) {
	if err := d.check(call(d.eventSynchronize, end), "cuEventSynchronize"); err != nil {
		return 0, err
	}
	var ms float32
	err := d.check(call(d.eventElapsed, uintptr(unsafe.Pointer(&ms)), start, end), "cuEventElapsedTime")
	return ms, err
}

func (d *driverAPI) funcAttribute(f uintptr, attr int) (int, error) {
	var v int32
	err := d.check(call(d.funcGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(attr), f), fmt.Sprintf("cuFuncGetAttribute(%d)", attr))
	return int(v), err
}
