package cuda

import (
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

func TestDeviceMemoryCountsLiveTensors(t *testing.T) {
	be := testBackend(t)
	in0, _ := be.DeviceMemory()
	a, err := be.Alloc(kernels.F32, 1024, 256) // 1 MiB
	if err != nil {
		t.Fatal(err)
	}
	b, err := be.Alloc(kernels.BF16, 1024) // 2 KiB
	if err != nil {
		t.Fatal(err)
	}
	in1, peak1 := be.DeviceMemory()
	if in1-in0 != 1<<20+2048 || peak1 < in1 {
		t.Errorf("after two allocations: in use %d (+%d), peak %d", in1, in1-in0, peak1)
	}
	v, _ := be.Reshape(a, 256, 1024)
	be.Free(v) // a view: frees nothing
	be.Free(a)
	be.Free(b)
	in2, peak2 := be.DeviceMemory()
	if in2 != in0 || peak2 != peak1 {
		t.Errorf("after freeing: in use %d (want %d), peak %d (want %d)", in2, in0, peak2, peak1)
	}
}
