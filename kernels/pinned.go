package kernels

// Pinner is an optional extension for backends whose operations all run on
// one owner goroutine (the CUDA backend: a CUDA context is current on one
// locked OS thread). Each operation called from another goroutine is handed
// to the owner and waited for — a few microseconds of thread hand-off, which
// at thousands of small operations a step is what decides the speed.
// Pinned runs f itself on the owner, where the operations f calls run
// directly. A caller that issues many operations in a row (a forward pass,
// a training step, a decode step) wraps them with RunPinned.
type Pinner interface {
	// Pinned runs f on the backend's owner goroutine and returns its
	// error. Inside f, calls to the backend run without a hand-off; f must
	// not wait for other goroutines that call the backend (they would wait
	// for f). Pinned may be nested.
	Pinned(f func() error) error
}

// RunPinned runs f through be's Pinned when be is a Pinner, else directly.
func RunPinned(be Backend, f func() error) error {
	if p, ok := be.(Pinner); ok {
		return p.Pinned(f)
	}
	return f()
}
