package jpegdec

import "fmt"

// output runs the IDCT of progressive files, then upsamples and converts colours row by row.
func (d *decoder) output() (*Image, error) {
	for _, c := range d.comps {
		if !c.scanned {
			if !d.progressive {
				return nil, FormatError(fmt.Sprintf("component %d never appears in a scan", c.id))
			}
			// libjpeg's IDCT multipliers stay zero for a component with no data: uniform grey.
			for i := range c.plane {
				c.plane[i] = 128
			}
			continue
		}
		if d.progressive {
			for by := 0; by < c.bh; by++ {
				for bx := 0; bx < c.bw; bx++ {
					idctBlock(&c.coefs[by*c.bwa+bx], c.quant, c.plane[by*8*c.stride+bx*8:], c.stride)
				}
			}
		}
	}
	img := &Image{
		Width: d.width, Height: d.height, Channels: len(d.comps),
		Pix:     make([]uint8, d.width*d.height*len(d.comps)),
		EXIF:    d.exif,
		XMP:     d.xmp,
		Corrupt: d.corrupt,
	}
	if d.progressive {
		img.Unsmoothed = d.wouldSmooth()
	}
	w := d.width
	rows := make([][]uint8, len(d.comps))
	bufs := make([][]uint8, len(d.comps))
	for i := range bufs {
		bufs[i] = make([]uint8, 2*w+8)
	}
	for y := 0; y < d.height; y++ {
		for i, c := range d.comps {
			rows[i] = d.upsampleRow(c, y, bufs[i])[:w]
		}
		out := img.Pix[y*w*len(d.comps) : (y+1)*w*len(d.comps)]
		switch len(d.comps) {
		case 1:
			copy(out, rows[0])
		case 3:
			if d.colourRGB() {
				for x := 0; x < w; x++ {
					out[3*x], out[3*x+1], out[3*x+2] = rows[0][x], rows[1][x], rows[2][x]
				}
			} else {
				yccToRGB(out, rows[0], rows[1], rows[2])
			}
		case 4:
			if d.colourYCCK() {
				ycckToCMYK(out, rows[0], rows[1], rows[2], rows[3])
			} else {
				for x := 0; x < w; x++ {
					out[4*x], out[4*x+1], out[4*x+2], out[4*x+3] = rows[0][x], rows[1][x], rows[2][x], rows[3][x]
				}
			}
			// Pillow reads four-component JPEGs as "CMYK;I": every sample inverted.
			for i := range out {
				out[i] = 255 - out[i]
			}
		}
	}
	return img, nil
}

// colourRGB reports whether a three-component file holds RGB rather than YCbCr (libjpeg's
// default_decompress_parms: JFIF implies YCbCr, an Adobe marker's transform 0 means RGB, else the
// component ids 'R','G','B').
func (d *decoder) colourRGB() bool {
	switch {
	case d.jfif:
		return false
	case d.adobe:
		return d.transform == 0
	}
	return d.comps[0].id == 'R' && d.comps[1].id == 'G' && d.comps[2].id == 'B'
}

// colourYCCK reports whether a four-component file holds YCCK rather than CMYK: only with an Adobe
// marker whose transform is not 0.
func (d *decoder) colourYCCK() bool {
	return d.adobe && d.transform != 0
}

// wouldSmooth reports libjpeg's smoothing_ok condition at output time: DC known for every component
// and some of the first nine AC coefficients not fully refined.
func (d *decoder) wouldSmooth() bool {
	useful := false
	for _, c := range d.comps {
		if c.coefBits[0] < 0 {
			return false
		}
		for k := 1; k < 10; k++ {
			if c.coefBits[k] != 0 {
				useful = true
			}
		}
	}
	return useful
}

// planeRow returns the dw valid samples of row y of a component plane.
func (c *component) planeRow(y int) []uint8 {
	return c.plane[y*c.stride : y*c.stride+c.dw]
}

// upsampleRow returns output row y of component c at full resolution (at least Width samples), using
// libjpeg's upsampler for the component's ratio. buf holds at least 2·Width+8 bytes.
func (d *decoder) upsampleRow(c *component, y int, buf []uint8) []uint8 {
	hr, vr := d.hmax/c.h, d.vmax/c.v
	switch {
	case hr == 1 && vr == 1:
		return c.planeRow(y)
	case hr == 2 && vr == 1 && c.dw > 2:
		h2v1Fancy(buf, c.planeRow(y))
	case hr == 1 && vr == 2:
		near, far, bias := c.verticalPair(y)
		for x := range near {
			buf[x] = uint8((3*int(near[x]) + int(far[x]) + bias) >> 2)
		}
	case hr == 2 && vr == 2 && c.dw > 2:
		near, far, _ := c.verticalPair(y)
		h2v2Fancy(buf, near, far)
	default:
		src := c.planeRow(y / vr)
		n := len(src) * hr
		for x := 0; x < n; x++ {
			buf[x] = src[x/hr]
		}
	}
	return buf
}

// verticalPair returns, for output row y of a component upsampled 2× vertically, its nearer input row,
// the next nearer one (above for even y, below for odd y, the edge row repeated at the image edges as
// libjpeg's context rows do) and libjpeg's rounding bias for the 1-D vertical filter.
func (c *component) verticalPair(y int) (near, far []uint8, bias int) {
	cy := y / 2
	other, bias := cy-1, 1
	if y%2 == 1 {
		other, bias = cy+1, 2
	}
	other = max(0, min(c.dh-1, other))
	return c.planeRow(cy), c.planeRow(other), bias
}

// h2v1Fancy is libjpeg's h2v1_fancy_upsample: each output sample is ¾ of its input sample plus ¼ of
// the nearer neighbour, with alternating rounding; edge samples are copied.
func h2v1Fancy(out, in []uint8) {
	n := len(in)
	for i := 0; i < n; i++ {
		v := 3 * int(in[i])
		left, right := int(in[max(i-1, 0)]), int(in[min(i+1, n-1)])
		out[2*i] = uint8((v + left + 1) >> 2)
		out[2*i+1] = uint8((v + right + 2) >> 2)
	}
}

// h2v2Fancy is libjpeg's h2v2_fancy_upsample for one output row: a vertical ¾/¼ blend (column sums
// 3·near + far) followed by the horizontal one, divided by 16 with rounding biases 8 and 7.
func h2v2Fancy(out, near, far []uint8) {
	n := len(near)
	sum := func(i int) int { return 3*int(near[i]) + int(far[i]) }
	prev, this := sum(0), sum(0)
	for i := 0; i < n; i++ {
		next := this
		if i+1 < n {
			next = sum(i + 1)
		}
		out[2*i] = uint8((3*this + prev + 8) >> 4)
		out[2*i+1] = uint8((3*this + next + 7) >> 4)
		prev, this = this, next
	}
}

// libjpeg's YCbCr→RGB tables (jdcolor.c, SCALEBITS 16): R = Y + 1.402·Cr, B = Y + 1.772·Cb,
// G = Y − 0.34414·Cb − 0.71414·Cr, with its exact fixed-point rounding.
var crR, cbB, crG, cbG [256]int32

func init() {
	const scaleBits = 16
	const half = 1 << (scaleBits - 1)
	fix := func(x float64) int32 { return int32(x*(1<<scaleBits) + 0.5) }
	for i := range 256 {
		x := int32(i - 128)
		crR[i] = (fix(1.40200)*x + half) >> scaleBits
		cbB[i] = (fix(1.77200)*x + half) >> scaleBits
		crG[i] = -fix(0.71414) * x
		cbG[i] = -fix(0.34414)*x + half
	}
}

func clamp255(v int32) uint8 {
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}

// yccToRGB is libjpeg's ycc_rgb_convert for one row.
func yccToRGB(out, y, cb, cr []uint8) {
	for x := range y {
		yy, b, r := int32(y[x]), cb[x], cr[x]
		out[3*x] = clamp255(yy + crR[r])
		out[3*x+1] = clamp255(yy + (cbG[b]+crG[r])>>16)
		out[3*x+2] = clamp255(yy + cbB[b])
	}
}

// ycckToCMYK is libjpeg's ycck_cmyk_convert for one row: YCbCr→RGB, inverted, K passed through.
func ycckToCMYK(out, y, cb, cr, k []uint8) {
	for x := range y {
		yy, b, r := int32(y[x]), cb[x], cr[x]
		out[4*x] = clamp255(255 - (yy + crR[r]))
		out[4*x+1] = clamp255(255 - (yy + (cbG[b]+crG[r])>>16))
		out[4*x+2] = clamp255(255 - (yy + cbB[b]))
		out[4*x+3] = k[x]
	}
}
