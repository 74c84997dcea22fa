package cpu

import "golang.org/x/sys/cpu"

// ssdRowAVX2 is the AVX2/FMA state-row update of the recurrence (ssd_amd64.s).
//
//go:noescape
func ssdRowAVX2(row, b, c *float32, n int, decay, xp float32) float32

func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ssdRow = func(row, b, c []float32, decay, xp float32) float32 {
			n := len(row)
			if n == 0 {
				return 0
			}
			_, _ = b[n-1], c[n-1]
			return ssdRowAVX2(&row[0], &b[0], &c[0], n, decay, xp)
		}
	}
}
