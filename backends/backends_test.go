package backends

import (
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/cuda"
)

func TestOpen(t *testing.T) {
	be, note, err := Open("cpu")
	if err != nil || note != "" || !strings.HasPrefix(be.Name(), "cpu") {
		t.Fatalf("cpu: %v %q %v", be, note, err)
	}
	be.Close()
	for _, bad := range []string{"tpu", "cuda:x", "cuda:-1"} {
		if _, _, err := Open(bad); err == nil {
			t.Errorf("device %q accepted", bad)
		}
	}
	if ok, _ := cuda.Available(); ok {
		t.Skip("a GPU is present: the fallback paths are not exercised here")
	}
	be, note, err = Open("auto")
	if err != nil || !strings.HasPrefix(be.Name(), "cpu") || !strings.Contains(note, "running on the CPU") || strings.Contains(note, "tried:") {
		t.Errorf("auto without a GPU: %v %q %v", be, note, err)
	}
	if _, _, err := Open("cuda"); err == nil || !strings.Contains(err.Error(), "no usable GPU") {
		t.Errorf("cuda without a GPU: %v", err)
	}
}
