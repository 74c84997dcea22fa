package cuda

import (
	"embed"
	"fmt"
	"math"
	"runtime"
	"strings"
	"unsafe"
)

//go:embed *.cu
var sources embed.FS

// A module is one compiled source set with its kernels.
type module struct {
	name   string
	handle uintptr
	funcs  map[string]uintptr
}

// moduleFiles lists the sources of each module, prelude first.
var moduleFiles = map[string][]string{
	"core":   {"prelude.cu", "elementwise.cu", "norm.cu", "ssd.cu", "ssd_common.cu", "ssd_cc.cu", "attention.cu"},
	"ssd_tc": {"prelude.cu", "ssd_common.cu", "ssd_tc.cu"}, // compiled per shape (-DSSD_Q, -DSSD_PB, -DSSD_N)
	// ssd_tc.cu pipelined to one barrier a chunk (tcPipelined, ssd_ops.go).
	"ssd_tc2": {"prelude.cu", "ssd_common.cu", "ssd_tc2.cu"},
	// The previous tensor-core scan, for the side-by-side benchmark.
}

func moduleSource(name string) (string, error) {
	files, ok := moduleFiles[name]
	if !ok {
		return "", fmt.Errorf("unknown kernel module %q", name)
	}
	var sb strings.Builder
	for _, f := range files {
		b, err := sources.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("kernel source %s: %w", f, err)
		}
		fmt.Fprintf(&sb, "// ---- %s\n", f)
		sb.Write(b)
		sb.WriteString("\n")
	}
	return sb.String(), nil
}

// module returns the module name compiled with the given -D definitions
// (e.g. "SSD_Q=64"), compiling (or reading the disk cache) and loading it
// at first use. Owner goroutine only.
func (be *Backend) module(name string, defines ...string) (*module, error) {
	key := name + " " + strings.Join(defines, " ")
	if m, ok := be.modules[key]; ok {
		return m, nil
	}
	src, err := moduleSource(name)
	if err != nil {
		return nil, err
	}
	device := fmt.Sprintf("%s sm_%d%d", be.devName, be.ccMajor, be.ccMinor)
	opts := []string{fmt.Sprintf("--gpu-architecture=sm_%d%d", be.ccMajor, be.ccMinor), "--std=c++17"}
	for _, d := range defines {
		opts = append(opts, "-D"+d)
	}
	image, err := be.rtc.cachedCompile(name+".cu", src, opts, device, be.driverVersion)
	if err != nil && strings.Contains(err.Error(), "gpu-architecture") {
		// An NVRTC older than the device: let the driver finish PTX.
		opts[0] = fmt.Sprintf("--gpu-architecture=compute_%d%d", be.ccMajor, be.ccMinor)
		image, err = be.rtc.cachedCompile(name+".cu", src, opts, device, be.driverVersion)
	}
	if err != nil {
		return nil, fmt.Errorf("compiling kernels %s: %w", key, err)
	}
	var h uintptr
	res := call(be.drv.moduleLoadData, uintptr(unsafe.Pointer(&h)), uintptr(unsafe.Pointer(&image[0])))
	runtime.KeepAlive(image)
	if err := be.drv.check(res, "cuModuleLoadData "+key); err != nil {
		return nil, err
	}
	m := &module{name: key, handle: h, funcs: map[string]uintptr{}}
	be.modules[key] = m
	return m, nil
}

// kernel returns function fn of the module.
func (be *Backend) kernel(mod, fn string, defines ...string) (uintptr, error) {
	m, err := be.module(mod, defines...)
	if err != nil {
		return 0, err
	}
	if f, ok := m.funcs[fn]; ok {
		return f, nil
	}
	cname := cStr(fn)
	var f uintptr
	res := call(be.drv.moduleGetFunction, uintptr(unsafe.Pointer(&f)), m.handle, uintptr(unsafe.Pointer(&cname[0])))
	if err := be.drv.check(res, fmt.Sprintf("cuModuleGetFunction %s in %s", fn, m.name)); err != nil {
		return 0, err
	}
	m.funcs[fn] = f
	return f, nil
}

// dims is a launch shape.
type dims struct{ x, y, z int }

// devPtr is a raw device address (an offset into a tensor, a temporary).
type devPtr uint64

// launch enqueues kernel f. Each argument becomes one kernel parameter:
// *Tensor (nil allowed) its device pointer, devPtr the address, int an
// int32, int64 a long long, float32 a float, float64 a double, bool an
// int32 0/1.
func (be *Backend) launch(what string, f uintptr, grid, block dims, smem int, args ...any) error {
	slots := make([]uint64, len(args))
	params := make([]uintptr, len(args)+1)
	for i, a := range args {
		switch v := a.(type) {
		case *Tensor:
			if v != nil {
				slots[i] = v.ptr
			}
		case devPtr:
			slots[i] = uint64(v)
		case int:
			if v < math.MinInt32 || v > math.MaxInt32 {
				return fmt.Errorf("%s: argument %d = %d does not fit a 32-bit int", what, i, v)
			}
			slots[i] = uint64(uint32(int32(v)))
		case int64:
			slots[i] = uint64(v)
		case float32:
			slots[i] = uint64(math.Float32bits(v))
		case float64:
			slots[i] = math.Float64bits(v)
		case bool:
			if v {
				slots[i] = 1
			}
		default:
			return fmt.Errorf("%s: argument %d has unsupported type %T", what, i, a)
		}
		params[i] = uintptr(unsafe.Pointer(&slots[i]))
	}
	for _, d := range []int{grid.x, grid.y, grid.z, block.x, block.y, block.z} {
		if d <= 0 || d > math.MaxInt32 {
			return fmt.Errorf("%s: bad launch shape grid %v block %v", what, grid, block)
		}
	}
	res := call(be.drv.launchKernel, f, uintptr(grid.x), uintptr(grid.y), uintptr(grid.z),
		uintptr(block.x), uintptr(block.y), uintptr(block.z), uintptr(smem), be.stream,
		uintptr(unsafe.Pointer(&params[0])), 0)
	runtime.KeepAlive(slots)
	return be.drv.check(res, "cuLaunchKernel "+what)
}

// setMaxDynamicShared lets f use more than 48 KiB of dynamic shared memory.
func (be *Backend) setMaxDynamicShared(f uintptr, bytes int) error {
	return be.drv.check(call(be.drv.funcSetAttribute, f, funcAttrMaxDynamicShared, uintptr(bytes)), fmt.Sprintf("cuFuncSetAttribute(max dynamic shared = %d)", bytes))
}

// gridFor is the block count of a grid-stride kernel over n items.
func (be *Backend) gridFor(n int64, block int) int {
	b := (n + int64(block) - 1) / int64(block)
	return int(max(1, min(b, int64(be.sms)*16)))
}
