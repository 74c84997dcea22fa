package cuda

import (
	"fmt"
	"strings"
	"unsafe"
)

// DeviceInfo describes one GPU.
type DeviceInfo struct {
	Index             int
	Name              string
	ComputeCapability string // "9.0"
	Multiprocessors   int
	MemoryBytes       uint64
	L2Bytes           int
	SharedPerBlock    int // opt-in maximum of dynamic shared memory per block
}

// Report is what Info finds: driver and library versions, the files that
// were opened, and the devices.
type Report struct {
	DriverVersion string // CUDA version the driver supports, "13.0"
	NVRTCVersion  string
	CUBLASVersion string
	Libraries     []string
	Devices       []DeviceInfo
}

// String is a few lines for a terminal.
func (r *Report) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "CUDA driver %s, NVRTC %s, cuBLAS %s\n", r.DriverVersion, r.NVRTCVersion, r.CUBLASVersion)
	for _, d := range r.Devices {
		fmt.Fprintf(&sb, "cuda:%d  %s  sm_%s  %d SMs  %.1f GiB  L2 %d MiB\n", d.Index, d.Name,
			strings.ReplaceAll(d.ComputeCapability, ".", ""), d.Multiprocessors, float64(d.MemoryBytes)/(1<<30), d.L2Bytes>>20)
	}
	for _, l := range r.Libraries {
		fmt.Fprintf(&sb, "  %s\n", l)
	}
	return strings.TrimRight(sb.String(), "\n")
}

// Info opens the libraries and describes the driver and every device. It
// creates no context.
func Info() (*Report, error) {
	if err := loadLibraries(); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	d := libs.drv
	if err := d.cuInit(); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	v, err := d.version()
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	r := &Report{
		DriverVersion: fmt.Sprintf("%d.%d", v/1000, v%1000/10),
		NVRTCVersion:  fmt.Sprintf("%d.%d", libs.rtc.major, libs.rtc.minor),
		CUBLASVersion: "unknown",
		Libraries:     append([]string(nil), libs.paths...),
	}
	if p := libs.blas.getProperty; p != 0 {
		var maj, minr, patch int32
		if call(p, 0, uintptr(unsafe.Pointer(&maj))) == 0 && call(p, 1, uintptr(unsafe.Pointer(&minr))) == 0 &&
			call(p, 2, uintptr(unsafe.Pointer(&patch))) == 0 {
			r.CUBLASVersion = fmt.Sprintf("%d.%d.%d", maj, minr, patch)
		}
	}
	n, err := d.deviceCount()
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	for i := range n {
		di, err := describe(d, i)
		if err != nil {
			return nil, fmt.Errorf("cuda: device %d: %w", i, err)
		}
		r.Devices = append(r.Devices, di)
	}
	return r, nil
}

func describe(d *driverAPI, i int) (DeviceInfo, error) {
	di := DeviceInfo{Index: i}
	dev, err := d.device(i)
	if err != nil {
		return di, err
	}
	if di.Name, err = d.deviceName(dev); err != nil {
		return di, err
	}
	var major, minor int
	for _, a := range []struct {
		dst  *int
		attr int
	}{{&major, attrCCMajor}, {&minor, attrCCMinor}, {&di.Multiprocessors, attrMultiprocessorCount},
		{&di.L2Bytes, attrL2CacheSize}, {&di.SharedPerBlock, attrMaxSharedPerBlockOptin}} {
		if *a.dst, err = d.attribute(dev, a.attr); err != nil {
			return di, err
		}
	}
	di.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	di.MemoryBytes, err = d.totalMem(dev)
	return di, err
}

// Available reports whether a CUDA device can be used: the driver, NVRTC
// and cuBLAS load and at least one device is present. It never panics;
// why says what is missing.
func Available() (ok bool, why string) {
	defer func() {
		if r := recover(); r != nil {
			ok, why = false, fmt.Sprintf("probing CUDA panicked: %v", r)
		}
	}()
	if err := loadLibraries(); err != nil {
		return false, err.Error()
	}
	if err := libs.drv.cuInit(); err != nil {
		return false, err.Error()
	}
	n, err := libs.drv.deviceCount()
	if err != nil {
		return false, err.Error()
	}
	if n == 0 {
		return false, "the CUDA driver reports no device"
	}
	return true, fmt.Sprintf("%d CUDA device(s)", n)
}
