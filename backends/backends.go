// Package backends picks the compute backend for a --device flag: the GPU
// when one is usable, else the CPU, saying why.
package backends

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/kernels/cuda"
)

// Open returns the backend for device "auto", "cpu", "cuda" or "cuda:N".
// With "auto", a GPU that cannot be loaded or initialised falls back to the
// CPU and note says why in one line; "cuda" fails with that reason instead.
func Open(device string) (be kernels.Backend, note string, err error) {
	d := strings.ToLower(strings.TrimSpace(device))
	switch {
	case d == "" || d == "auto":
		if ok, why := cuda.Available(); !ok {
			return cpu.New(0), "no usable GPU (" + brief(why) + "): running on the CPU", nil
		}
		be, err := cuda.New(0)
		if err != nil {
			return cpu.New(0), fmt.Sprintf("GPU initialisation failed (%v): running on the CPU", err), nil
		}
		return be, "", nil
	case d == "cpu":
		return cpu.New(0), "", nil
	case d == "cuda" || strings.HasPrefix(d, "cuda:"):
		idx := 0
		if rest, ok := strings.CutPrefix(d, "cuda:"); ok {
			if idx, err = strconv.Atoi(rest); err != nil || idx < 0 {
				return nil, "", fmt.Errorf("device %q: want cuda:N with N a GPU index", device)
			}
		}
		if ok, why := cuda.Available(); !ok {
			return nil, "", fmt.Errorf("--device %s: no usable GPU: %s", device, why)
		}
		be, err := cuda.New(idx)
		if err != nil {
			return nil, "", fmt.Errorf("--device %s: %w", device, err)
		}
		return be, "", nil
	}
	return nil, "", fmt.Errorf("unknown device %q: want auto, cpu, cuda or cuda:N", device)
}

// brief keeps the reason and drops the list of paths tried (`devices` shows all).
func brief(why string) string {
	if i := strings.Index(why, "; tried:"); i > 0 {
		return why[:i]
	}
	return why
}
