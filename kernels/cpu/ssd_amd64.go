package cpu

import "golang.org/x/sys/cpu"

// ssdTokenAVX2 is the AVX2/FMA token step of the recurrence (ssd_amd64.s).
//
//go:noescape
func ssdTokenAVX2(S, x, b, c, y *float32, P, N int, decay, dt, dh float32)

func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ssdToken = func(S, x, b, c, y []float32, decay, dt, dh float32) {
			P, N := len(x), len(b)
			if P == 0 || N == 0 {
				return
			}
			_, _, _ = S[P*N-1], c[N-1], y[P-1]
			ssdTokenAVX2(&S[0], &x[0], &b[0], &c[0], &y[0], P, N, decay, dt, dh)
		}
	}
}
