package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ebitengine/purego"
	"github.com/matsurgery/matsurgery/kernels"
)

// Without GPUs these tests run on the emulator (testdata/emu: two devices
// by default, and a fake NCCL that sums in host memory):
//
//	kernels/cuda/testdata/emu/build.sh
//	MATSURGERY_CUDA_LIB_DIR=$PWD/kernels/cuda/testdata/emu/lib \
//	MATSURGERY_CUDA_CACHE=/tmp/emu-cache go test ./kernels/cuda -run Group

// groupDevices returns the number of devices, or skips the test when
// there is no CUDA device or no NCCL.
func groupDevices(t testing.TB) int {
	t.Helper()
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	if _, _, err := NCCLVersion(); err != nil {
		t.Skipf("no NCCL: %v", err)
	}
	r, err := Info()
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	return len(r.Devices)
}

// rankCounts is 1 and every device (at most 8), without repeats.
func rankCounts(n int) []int { return slices.Compact([]int{1, min(n, 8)}) }

func openGroup(t testing.TB, ranks int) *Group {
	t.Helper()
	devs := make([]int, ranks)
	for i := range devs {
		devs[i] = i
	}
	g, err := NewGroup(devs)
	if err != nil {
		t.Fatalf("NewGroup(%v): %v", devs, err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return g
}

// randomValues are seeded values in [−1, 1) without zeros.
func randomValues(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(2*rng.Float64() - 1)
		if v[i] == 0 {
			v[i] = 0.5
		}
	}
	return v
}

// relErr is ‖got − want‖₂ / ‖want‖₂.
func relErr(got []float32, want []float64) float64 {
	var num, den float64
	for i, w := range want {
		d := float64(got[i]) - w
		num += d * d
		den += w * w
	}
	return math.Sqrt(num / den)
}

func TestGroupAllReduceSum(t *testing.T) {
	n := groupDevices(t)
	shapes := [][]int{{1}, {7}, {3, 333}, {70001}, {2, 4, 129}}
	for _, ranks := range rankCounts(n) {
		t.Run(fmt.Sprintf("ranks=%d", ranks), func(t *testing.T) {
			g := openGroup(t, ranks)
			if g.Size() != ranks || len(g.Devices()) != ranks || !strings.Contains(g.Name(), "NCCL") {
				t.Fatalf("group of %d: Size %d, Devices %v, Name %q", ranks, g.Size(), g.Devices(), g.Name())
			}
			rng := rand.New(rand.NewPCG(8, uint64(ranks)))
			host := make([][][]float32, ranks) // [rank][tensor]
			per := make([][]kernels.Tensor, ranks)
			for r := range ranks {
				be := g.Backend(r)
				for _, sh := range shapes {
					v := randomValues(rng, prod(sh))
					x, err := be.Upload(v, kernels.F32, sh...)
					if err != nil {
						t.Fatal(err)
					}
					host[r] = append(host[r], v)
					// Doubled on the rank's stream before the sum: the
					// collective must see it.
					if err := be.Add(x, x, x); err != nil {
						t.Fatal(err)
					}
					per[r] = append(per[r], x)
				}
			}
			if err := g.AllReduceSum(per); err != nil {
				t.Fatalf("AllReduceSum: %v", err)
			}
			// Doubled again after the sum, on each rank's stream.
			for r := range ranks {
				for _, x := range per[r] {
					if err := g.Backend(r).Add(x, x, x); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := g.Sync(); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			tol := 2e-7 * float64(ranks+1)
			for i, sh := range shapes {
				want := make([]float64, prod(sh))
				for r := range ranks {
					for j, v := range host[r][i] {
						want[j] += 4 * float64(v)
					}
				}
				var first []float32
				for r := range ranks {
					got, err := g.Backend(r).Download(per[r][i])
					if err != nil {
						t.Fatal(err)
					}
					if e := relErr(got, want); e > tol {
						t.Errorf("tensor %d %v on rank %d: relative error %.3g > %.3g", i, sh, r, e, tol)
					}
					// Identical optimiser steps need identical sums on
					// every rank, bit for bit.
					if r == 0 {
						first = got
					} else if !slices.Equal(got, first) {
						t.Errorf("tensor %d %v: rank %d's sum differs from rank 0's", i, sh, r)
					}
				}
			}
		})
	}
}

func prod(sh []int) int {
	n := 1
	for _, d := range sh {
		n *= d
	}
	return n
}

// TestGroupRepeated runs many small rounds: the barrier of every round
// (the emulator's) and the streams' order (a GPU's) hold up.
func TestGroupRepeated(t *testing.T) {
	n := groupDevices(t)
	ranks := min(n, 8)
	g := openGroup(t, ranks)
	per := make([][]kernels.Tensor, ranks)
	for r := range ranks {
		for k := range 3 {
			v := make([]float32, 5+k)
			for i := range v {
				v[i] = float32(r + 1)
			}
			x, err := g.Backend(r).Upload(v, kernels.F32, len(v))
			if err != nil {
				t.Fatal(err)
			}
			per[r] = append(per[r], x)
		}
	}
	rounds := 60
	for k := range rounds {
		sub := make([][]kernels.Tensor, ranks)
		for r := range ranks {
			sub[r] = per[r][:1+k%3] // one, two or three tensors a round
		}
		if err := g.AllReduceSum(sub); err != nil {
			t.Fatalf("round %d: %v", k, err)
		}
	}
	// Tensor j took part in the rounds k with k%3 ≥ j; each multiplies by
	// ranks (every rank holds the same value after the first).
	for j := range 3 {
		times := 0
		for k := range rounds {
			if k%3 >= j {
				times++
			}
		}
		start := float64(ranks*(ranks+1)) / 2 // the first round's sum
		want := start * math.Pow(float64(ranks), float64(times-1))
		for r := range ranks {
			got, err := g.Backend(r).Download(per[r][j])
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range got {
				if math.Abs(float64(v)-want) > 1e-6*want {
					t.Fatalf("tensor %d element %d on rank %d after %d rounds: %g, want %g", j, i, r, times, v, want)
				}
			}
		}
	}
}

// TestGroupAllReduceErrors: bad operands are refused before anything is
// enqueued, so the group stays usable.
func TestGroupAllReduceErrors(t *testing.T) {
	n := groupDevices(t)
	ranks := min(n, 2)
	g := openGroup(t, ranks)
	other, err := New(0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	up := func(be kernels.Backend, dt kernels.DType, shape ...int) kernels.Tensor {
		x, err := be.Upload(make([]float32, prod(shape)), dt, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	good := func() [][]kernels.Tensor {
		per := make([][]kernels.Tensor, ranks)
		for r := range ranks {
			per[r] = []kernels.Tensor{up(g.Backend(r), kernels.F32, 4), up(g.Backend(r), kernels.F32, 2, 3)}
		}
		return per
	}
	freed := good()
	g.Backend(0).Free(freed[0][1])
	foreign := good()
	foreign[ranks-1][0] = up(other, kernels.F32, 4)
	bf := good()
	bf[0][1] = up(g.Backend(0), kernels.BF16, 6)
	short := good()
	short[0] = short[0][:1]
	size := good()
	size[ranks-1][1] = up(g.Backend(ranks-1), kernels.F32, 7)
	same := good()
	same[0][1], _ = g.Backend(0).Reshape(same[0][0], 2, 2)
	withNil := good()
	withNil[0][1] = nil
	for _, c := range []struct {
		name string
		per  [][]kernels.Tensor
		want string
	}{
		{"ranks", good()[:ranks-1], "lists of tensors"},
		{"freed", freed, "freed"},
		{"foreign", foreign, "another backend"},
		{"bf16", bf, "want f32"},
		{"count", short, "tensors, rank 0 has"},
		{"size", size, "elements"},
		{"alias", same, "share memory"},
		{"nil", withNil, "nil"},
	} {
		if ranks == 1 && (c.name == "count" || c.name == "size") {
			continue // disagreement needs two ranks
		}
		err := g.AllReduceSum(c.per)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if err := g.AllReduceSum(good()); err != nil {
		t.Fatalf("after refused calls, a good all-reduce: %v", err)
	}
	if err := g.AllReduceSum(make([][]kernels.Tensor, ranks)); err != nil {
		t.Fatalf("nothing to sum: %v", err)
	}
}

func TestGroupLifecycle(t *testing.T) {
	n := groupDevices(t)
	for _, devs := range [][]int{nil, {0, 0}, {-1}, {n}} {
		if g, err := NewGroup(devs); err == nil {
			g.Close()
			t.Errorf("NewGroup(%v) succeeded", devs)
		}
	}
	g, err := NewGroup([]int{0})
	if err != nil {
		t.Fatal(err)
	}
	x, err := g.Backend(0).Upload([]float32{1, 2}, kernels.F32, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := g.AllReduceSum([][]kernels.Tensor{{x}}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("all-reduce after close: %v", err)
	}
}

// TestGroupNVLS: a group turns multicast collectives off unless the user
// chose; on the emulator, the fake NCCL reports what reached C's
// environment.
func TestGroupNVLS(t *testing.T) {
	groupDevices(t)
	seen := func() (string, bool) {
		n, err := loadNCCL()
		if err != nil {
			t.Fatal(err)
		}
		p, err := purego.Dlsym(n.lib.handle, "emuNcclNvlsEnable")
		if err != nil || p == 0 {
			return "", false
		}
		return cString(callPtr(p)), true
	}
	for _, c := range []struct{ set, want string }{{"", "0"}, {"1", "1"}} {
		t.Setenv(envNVLS, c.set) // restored after the test
		if c.set == "" {
			os.Unsetenv(envNVLS)
		}
		g := openGroup(t, 1)
		if got := os.Getenv(envNVLS); got != c.want {
			t.Errorf("user's %s=%q: the group left %q, want %q", envNVLS, c.set, got, c.want)
		}
		if s, emu := seen(); emu && s != c.want {
			t.Errorf("user's %s=%q: NCCL saw %q, want %q", envNVLS, c.set, s, c.want)
		}
		g.Close()
	}
}

// TestGroupWithoutNCCL runs itself in a child process whose
// MATSURGERY_NCCL_LIB names no file: the error must say what is missing.
func TestGroupWithoutNCCL(t *testing.T) {
	if os.Getenv("MATSURGERY_TEST_NO_NCCL_CHILD") == "1" {
		_, err := NewGroup([]int{0, 1})
		if err == nil {
			fmt.Println("NO ERROR")
			return
		}
		fmt.Println("ERROR:", err)
		return
	}
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s", why)
	}
	missing := filepath.Join(t.TempDir(), "libnccl.so.2")
	cmd := exec.Command(os.Args[0], "-test.run=^TestGroupWithoutNCCL$", "-test.v")
	cmd.Env = append(os.Environ(), "MATSURGERY_TEST_NO_NCCL_CHILD=1", "MATSURGERY_NCCL_LIB="+missing)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "ERROR:") {
		t.Fatalf("NewGroup without libnccl succeeded:\n%s", s)
	}
	for _, want := range []string{"need libnccl.so.2", missing, "MATSURGERY_NCCL_LIB"} {
		if !strings.Contains(s, want) {
			t.Errorf("error does not mention %q:\n%s", want, s)
		}
	}
}

func TestPythonNCCLDirs(t *testing.T) {
	venv := t.TempDir()
	t.Setenv("VIRTUAL_ENV", venv)
	t.Setenv("CONDA_PREFIX", "")
	for _, v := range []string{"python3.11", "python3.12"} {
		if err := os.MkdirAll(filepath.Join(venv, "lib", v, "site-packages"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A python3 on $PATH names another environment, searched next.
	other := t.TempDir()
	for _, d := range []string{"bin", "lib/python3.10/dist-packages"} {
		if err := os.MkdirAll(filepath.Join(other, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(other, "bin", "python3"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Join(other, "bin")+string(filepath.ListSeparator)+filepath.Join(venv, "bin"))
	dirs := pythonNCCLDirs()
	want := filepath.Join(venv, "lib", "python3.12", "site-packages", "nvidia", "nccl", "lib")
	if len(dirs) < 6 || dirs[0] != want || !strings.Contains(dirs[2], "python3.11") ||
		dirs[4] != filepath.Join(other, "lib", "python3.10", "dist-packages", "nvidia", "nccl", "lib") {
		t.Fatalf("pythonNCCLDirs() starts %v, want the venv's newest Python first (%s), then $PATH's python3", dirs[:min(6, len(dirs))], want)
	}
	if len(uniqueStrings(dirs)) != len(dirs) {
		t.Fatalf("pythonNCCLDirs() repeats a folder: %v", dirs)
	}
}

func TestNCCLVersionString(t *testing.T) {
	for code, want := range map[int]string{22703: "2.27.3", 21903: "2.19.3", 2408: "2.4.8"} {
		if got := (&ncclAPI{version: code}).versionString(); got != want {
			t.Errorf("version %d = %q, want %q", code, got, want)
		}
	}
}

// BenchmarkAllReduce sums 256 MiB of F32 a rank over every device (the
// size of a Phi-2 25% hybrid's mixer gradients is ≈1 GiB), waiting for
// each; it reports algorithm and bus bandwidth as nccl-tests defines them.
func BenchmarkAllReduce(b *testing.B) {
	n := groupDevices(b)
	const elems = 64 << 20
	for _, ranks := range rankCounts(n) {
		b.Run(fmt.Sprintf("ranks=%d", ranks), func(b *testing.B) {
			g := openGroup(b, ranks)
			per := make([][]kernels.Tensor, ranks)
			for r := range ranks {
				x, err := g.Backend(r).Upload(make([]float32, elems), kernels.F32, elems)
				if err != nil {
					b.Fatal(err)
				}
				per[r] = []kernels.Tensor{x}
			}
			if err := g.AllReduceSum(per); err != nil { // warm-up: NCCL sets up its channels
				b.Fatal(err)
			}
			if err := g.Sync(); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := g.AllReduceSum(per); err != nil {
					b.Fatal(err)
				}
				if err := g.Sync(); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			alg := float64(elems*4) / sec / 1e9
			b.ReportMetric(alg, "algGB/s")
			b.ReportMetric(alg*2*float64(ranks-1)/float64(ranks), "busGB/s")
		})
	}
}
