package cuda

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// Inside Pinned, operations run on the owner without a hand-off and give
// the same results; Pinned nests; a panic comes back as an error; other
// goroutines' calls still work once it returns.
func TestPinned(t *testing.T) {
	be := testBackend(t)
	a := []float32{1.5, -2, 3.25, 7}
	b := []float32{0.5, 4, -1.25, 2}
	want := []float32{2, 2, 2, 9}
	var got []float32
	err := be.Pinned(func() error {
		if !be.onOwner() {
			return errors.New("Pinned's function does not run on the owner")
		}
		return kernels.RunPinned(be, func() error { // nested
			ta, err := be.Upload(a, kernels.F32, 4)
			if err != nil {
				return err
			}
			tb, err := be.Upload(b, kernels.F32, 4)
			if err != nil {
				return err
			}
			if err := be.Add(ta, ta, tb); err != nil {
				return err
			}
			got, err = be.Download(ta)
			be.Free(ta)
			be.Free(tb)
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("a+b = %v, want %v", got, want)
		}
	}
	if be.onOwner() {
		t.Fatal("the test goroutine claims to be the owner")
	}
	err = be.Pinned(func() error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("panic inside Pinned: err = %v", err)
	}
	// The backend still serves other goroutines.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tt, err := be.Upload(a, kernels.F32, 4)
			if err == nil {
				err = be.Scale(tt, tt, 2)
				be.Free(tt)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}
