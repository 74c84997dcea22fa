package images

import (
	"fmt"
	"image"
	"math"
	"runtime"
	"sync"
)

// Resizing follows Pillow's Resample.c for 8-bit images and the BICUBIC filter, which is what
// `Image.resize((w, h), Image.BICUBIC)` runs (no reducing_gap, the whole image as the box):
//
//   - per output pixel, the filter is centred at (i + 0.5)·scale in input coordinates, scale = in/out;
//     when shrinking, the kernel is stretched by the scale (support 2·scale), which antialiases;
//   - the kernel is Keys' cubic convolution with a = −0.5;
//   - weights are normalised to sum 1 in float64, then converted to 22-bit fixed point, rounding half
//     away from zero;
//   - the horizontal pass runs first (only over the input rows the vertical pass reads), its results are
//     rounded and clipped to 8 bits, then the vertical pass runs on those 8-bit values;
//   - a pass whose size does not change is skipped.
//
// Every floating-point product below is wrapped in float64(...) so that the Go compiler may not fuse it
// into a fused multiply-add: Pillow's wheels are compiled for baseline x86-64 without FMA, and one
// differently rounded weight can change an output pixel.

// precisionBits is Pillow's PRECISION_BITS for 8-bit images: 32 − 8 − 2.
const precisionBits = 32 - 8 - 2

// bicubicSupport is the half-width of the bicubic kernel in input pixels before stretching.
const bicubicSupport = 2.0

// bicubic is Keys' cubic convolution kernel with a = −0.5 (Pillow's bicubic_filter).
func bicubic(x float64) float64 {
	const a = -0.5
	if x < 0 {
		x = -x
	}
	if x < 1 {
		return float64(float64(float64(float64((a+2.0)*x)-(a+3.0))*x)*x) + 1
	}
	if x < 2 {
		return float64(float64(float64(float64(x-5)*x)+8)*x-4) * a
	}
	return 0
}

// resampleCoeffs are the fixed-point filter weights of one axis.
type resampleCoeffs struct {
	ksize  int     // weights per output pixel (unused tail entries are 0)
	first  []int   // first input index each output pixel reads
	count  []int   // how many input pixels it reads
	weight []int32 // out × ksize weights in precisionBits fixed point
}

// newResampleCoeffs computes the weights for resizing an axis of inSize pixels to outSize pixels
// (Pillow's precompute_coeffs followed by normalize_coeffs_8bpc).
func newResampleCoeffs(inSize, outSize int) resampleCoeffs {
	scale := float64(inSize) / float64(outSize)
	filterScale := max(scale, 1.0)
	support := bicubicSupport * filterScale
	ksize := int(math.Ceil(support))*2 + 1
	c := resampleCoeffs{
		ksize:  ksize,
		first:  make([]int, outSize),
		count:  make([]int, outSize),
		weight: make([]int32, outSize*ksize),
	}
	w := make([]float64, ksize)
	ss := 1.0 / filterScale
	for xx := 0; xx < outSize; xx++ {
		center := float64(float64(xx)+0.5) * scale
		xmin := int(center - support + 0.5) // truncation toward zero, as C's (int) cast
		if xmin < 0 {
			xmin = 0
		}
		xmax := int(center + support + 0.5)
		if xmax > inSize {
			xmax = inSize
		}
		n := xmax - xmin
		total := 0.0
		for x := 0; x < n; x++ {
			w[x] = bicubic(float64(float64(x+xmin)-center+0.5) * ss)
			total += w[x]
		}
		k := c.weight[xx*ksize : (xx+1)*ksize]
		for x := 0; x < n; x++ {
			v := w[x]
			if total != 0 {
				v /= total
			}
			if v < 0 {
				k[x] = int32(-0.5 + float64(v*(1<<precisionBits)))
			} else {
				k[x] = int32(0.5 + float64(v*(1<<precisionBits)))
			}
		}
		c.first[xx], c.count[xx] = xmin, n
	}
	return c
}

// clip8 turns a fixed-point accumulator into an 8-bit sample (Pillow's clip8).
func clip8(v int32) uint8 {
	if v <= 0 {
		return 0
	}
	if v >= 255<<precisionBits {
		return 255
	}
	return uint8(v >> precisionBits)
}

// Resize returns img scaled to w×h exactly as Pillow's `Image.resize((w, h), Image.BICUBIC)` does on
// the RGB image (img is first converted with ToRGB). w and h must be positive.
func Resize(img image.Image, w, h int) (*RGB, error) {
	if w <= 0 || h <= 0 {
		return nil, fmt.Errorf("resize to %d×%d: the size must be positive", w, h)
	}
	src := ToRGB(img)
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	if sw <= 0 || sh <= 0 {
		return nil, fmt.Errorf("resize a %d×%d image: the image is empty", sw, sh)
	}
	out := NewRGB(image.Rect(0, 0, w, h))
	resizeRGB(src.packed(), sw, sh, out.Pix, w, h)
	return out, nil
}

// resizeRGB resizes packed RGB pixels src (sw×sh) into dst (dw×dh), both tightly packed.
func resizeRGB(src []uint8, sw, sh int, dst []uint8, dw, dh int) {
	needH, needV := dw != sw, dh != sh
	switch {
	case !needH && !needV:
		copy(dst, src[:3*sw*sh])
	case needH && !needV:
		horizontalPass(dst, src, sw, 0, sh, newResampleCoeffs(sw, dw), dw)
	case !needH && needV:
		verticalPass(dst, src, sw, newResampleCoeffs(sh, dh), dh, 0)
	default:
		hc := newResampleCoeffs(sw, dw)
		vc := newResampleCoeffs(sh, dh)
		// Only the rows the vertical pass reads go through the horizontal pass.
		y0 := vc.first[0]
		y1 := vc.first[dh-1] + vc.count[dh-1]
		tmp := make([]uint8, 3*dw*(y1-y0))
		horizontalPass(tmp, src, sw, y0, y1, hc, dw)
		verticalPass(dst, tmp, dw, vc, dh, y0)
	}
}

// parallelRows splits rows [0, n) into contiguous bands run on up to GOMAXPROCS goroutines when the
// work (multiply-adds) is large enough to pay for them. The passes are integer arithmetic, so the
// result does not depend on the split.
func parallelRows(n, workPerRow int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), n, n*workPerRow/(1<<19))
	if workers <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		lo, hi := n*i/workers, n*(i+1)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}

// horizontalPass resamples rows y0..y1 of src (width sw) to width dw into dst (row 0 = src row y0).
func horizontalPass(dst, src []uint8, sw, y0, y1 int, c resampleCoeffs, dw int) {
	parallelRows(y1-y0, 3*dw*c.ksize, func(lo, hi int) {
		horizontalRows(dst, src, sw, y0+lo, y0+hi, y0, c, dw)
	})
}

// horizontalRows resamples source rows y0..y1 into dst, whose row 0 is source row base.
func horizontalRows(dst, src []uint8, sw, y0, y1, base int, c resampleCoeffs, dw int) {
	const half = int32(1) << (precisionBits - 1)
	for y := y0; y < y1; y++ {
		in := src[3*sw*y : 3*sw*(y+1)]
		out := dst[3*dw*(y-base) : 3*dw*(y-base+1)]
		for xx := 0; xx < dw; xx++ {
			first, n := c.first[xx], c.count[xx]
			k := c.weight[xx*c.ksize : xx*c.ksize+n]
			px := in[3*first : 3*(first+n)]
			r, g, b := half, half, half
			for i, kv := range k {
				p := px[3*i : 3*i+3 : 3*i+3]
				r += int32(p[0]) * kv
				g += int32(p[1]) * kv
				b += int32(p[2]) * kv
			}
			out[3*xx], out[3*xx+1], out[3*xx+2] = clip8(r), clip8(g), clip8(b)
		}
	}
}

// verticalPass resamples src (width w, whose row 0 is input row y0) to dh rows into dst.
func verticalPass(dst, src []uint8, w int, c resampleCoeffs, dh, y0 int) {
	parallelRows(dh, 3*w*c.ksize, func(lo, hi int) {
		verticalRows(dst, src, w, c, lo, hi, y0)
	})
}

// verticalRows computes output rows lo..hi of the vertical pass.
func verticalRows(dst, src []uint8, w int, c resampleCoeffs, lo, hi, y0 int) {
	const half = int32(1) << (precisionBits - 1)
	n3 := 3 * w
	acc := make([]int32, n3)
	for yy := lo; yy < hi; yy++ {
		for i := range acc {
			acc[i] = half
		}
		first, n := c.first[yy]-y0, c.count[yy]
		for j, kv := range c.weight[yy*c.ksize : yy*c.ksize+n] {
			row := src[n3*(first+j) : n3*(first+j+1)]
			row = row[:len(acc)]
			for i, v := range row {
				acc[i] += int32(v) * kv
			}
		}
		out := dst[n3*yy : n3*(yy+1)]
		for i, v := range acc {
			out[i] = clip8(v)
		}
	}
}
