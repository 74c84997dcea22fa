package cpu

import (
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

func TestExtensions(t *testing.T) {
	conformance.RunExtensions(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
}

func TestExtensionsOneWorker(t *testing.T) {
	conformance.RunExtensions(t, func() kernels.Backend { return New(1) }, conformance.DefaultTolerances())
}
