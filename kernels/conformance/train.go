package conformance

import (
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// RunTrainer checks the three families of kernels.Trainer (kernels/train.go)
// on the backend from newBackend: RunDenseGrad, RunMambaGrad and
// RunLossGrad, each in a subtest and each skipping a family the backend
// lacks.
func RunTrainer(t *testing.T, newBackend func() kernels.Backend, tol Tolerances) {
	t.Helper()
	t.Run("DenseGrad", func(t *testing.T) { RunDenseGrad(t, newBackend, tol) })
	t.Run("MambaGrad", func(t *testing.T) { RunMambaGrad(t, newBackend, tol) })
	t.Run("LossGrad", func(t *testing.T) { RunLossGrad(t, newBackend, tol) })
}
