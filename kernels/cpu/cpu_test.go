package cpu

import (
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
}

// One worker and several must give bit-identical results: each output
// element is computed the same way whatever the split.
func TestConformanceOneWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	conformance.Run(t, func() kernels.Backend { return New(1) }, conformance.DefaultTolerances())
}

func TestGolden(t *testing.T) {
	conformance.RunGolden(t, func() kernels.Backend { return New(0) }, "../../testdata/golden/kernels", conformance.DefaultTolerances())
}
