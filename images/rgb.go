// Package images loads pictures and turns them into the pixel tensors TinyLLaVA's SigLIP vision tower
// reads, reproducing what TinyLLaVA does in Python to the last bit where that is possible:
//
//   - Load decodes a PNG or JPEG into RGB the way `PIL.Image.open(path).convert("RGB")` does: PNG through
//     Go's lossless decoder, JPEG through a decoder that follows libjpeg-turbo's default decompression
//     (Pillow's JPEG library: accurate integer IDCT, "fancy" triangular chroma upsampling, its fixed-point
//     YCbCr→RGB), so the pixels equal PIL's, where Go's image/jpeg differs by up to tens of levels.
//     PIL's conversion quirks are kept: alpha is dropped, not composited; 16-bit grey saturates at 255;
//     four-component JPEGs are read as Adobe-inverted CMYK. A JPEG whose data is corrupt part-way is
//     decoded as libjpeg does (grey past the damage) without an error, as Pillow does; a file cut short
//     is an error, as in Pillow by default; LoadOptions.AllowTruncated decodes a cut-off JPEG the way
//     Pillow does with ImageFile.LOAD_TRUNCATED_IMAGES, which TinyLLaVA's data loader sets.
//     EXIF orientation is ignored by default, as TinyLLaVA ignores it; LoadOptions.ApplyEXIF rotates the
//     picture upright as `PIL.ImageOps.exif_transpose` does.
//   - Resize is Pillow's `Image.resize(size, Image.BICUBIC)`: a Keys cubic (a = −0.5) whose support grows
//     with the downscale factor, fixed-point coefficients, rounding to 8 bits after each pass.
//   - Preprocess is SiglipImageProcessor's pipeline (optionally after TinyLLaVA's expand2square padding):
//     resize to size×size, then (v/255 − 0.5)/0.5 in transformers' float32 order, as CHW float32.
package images

import (
	"image"
	"image/color"
)

// RGB is an 8-bit RGB image: Pix holds R, G, B for each pixel, row after row, Stride bytes apart.
// It is what `PIL.Image.convert("RGB")` holds, and implements image.Image.
type RGB struct {
	Pix    []uint8
	Stride int
	Rect   image.Rectangle
}

// NewRGB returns an all-black RGB image with bounds r.
func NewRGB(r image.Rectangle) *RGB {
	w, h := r.Dx(), r.Dy()
	if w < 0 || h < 0 {
		w, h = 0, 0
	}
	return &RGB{Pix: make([]uint8, 3*w*h), Stride: 3 * w, Rect: r}
}

// ColorModel is color.RGBAModel: every pixel is opaque.
func (p *RGB) ColorModel() color.Model { return color.RGBAModel }

// Bounds returns the image's rectangle.
func (p *RGB) Bounds() image.Rectangle { return p.Rect }

// At returns the pixel at (x, y) as an opaque color.RGBA (transparent black outside the bounds).
func (p *RGB) At(x, y int) color.Color {
	if !(image.Point{x, y}.In(p.Rect)) {
		return color.RGBA{}
	}
	i := p.PixOffset(x, y)
	return color.RGBA{p.Pix[i], p.Pix[i+1], p.Pix[i+2], 0xff}
}

// PixOffset is the index in Pix of the R byte of pixel (x, y).
func (p *RGB) PixOffset(x, y int) int {
	return (y-p.Rect.Min.Y)*p.Stride + (x-p.Rect.Min.X)*3
}

// row returns the 3·width bytes of image row y (0-based from Rect.Min.Y).
func (p *RGB) row(y int) []uint8 {
	w := p.Rect.Dx()
	return p.Pix[y*p.Stride : y*p.Stride+3*w]
}

// packed returns the pixels as one tightly packed slice (3·w·h bytes), copying only when the rows
// are not already contiguous.
func (p *RGB) packed() []uint8 {
	w, h := p.Rect.Dx(), p.Rect.Dy()
	if p.Stride == 3*w {
		return p.Pix[:3*w*h]
	}
	out := make([]uint8, 3*w*h)
	for y := 0; y < h; y++ {
		copy(out[y*3*w:], p.row(y))
	}
	return out
}

// ToRGB converts img to RGB with the semantics of PIL's `convert("RGB")` on the image PIL would hold:
// alpha is dropped (not composited: a transparent pixel keeps its own colour), grey is replicated, a
// palette is looked up, CMYK uses Pillow's cmyk2rgb. 16-bit channels keep their high byte, as Pillow's
// PNG unpackers do, except 16-bit grey (color.Gray16), which PIL holds as mode "I;16" and clips to 255
// when converting ("I;16"→"RGB" saturates instead of scaling, a long-standing Pillow behaviour that
// TinyLLaVA inherits). Premultiplied colour (image.RGBA, RGBA64) is un-premultiplied first.
// An *RGB is returned as is, not copied.
func ToRGB(img image.Image) *RGB {
	if p, ok := img.(*RGB); ok {
		return p
	}
	b := img.Bounds()
	out := NewRGB(image.Rect(0, 0, b.Dx(), b.Dy()))
	w, h := b.Dx(), b.Dy()
	switch m := img.(type) {
	case *image.RGBA:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			dst := out.row(y)
			for x := 0; x < w; x++ {
				p := src[4*x : 4*x+4 : 4*x+4]
				if p[3] == 0xff {
					dst[3*x], dst[3*x+1], dst[3*x+2] = p[0], p[1], p[2]
				} else {
					c := straightRGB(color.RGBA{p[0], p[1], p[2], p[3]})
					dst[3*x], dst[3*x+1], dst[3*x+2] = c[0], c[1], c[2]
				}
			}
		}
	case *image.NRGBA:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			dst := out.row(y)
			for x := 0; x < w; x++ {
				dst[3*x], dst[3*x+1], dst[3*x+2] = src[4*x], src[4*x+1], src[4*x+2]
			}
		}
	case *image.NRGBA64:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			dst := out.row(y)
			for x := 0; x < w; x++ {
				dst[3*x], dst[3*x+1], dst[3*x+2] = src[8*x], src[8*x+2], src[8*x+4]
			}
		}
	case *image.Gray:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			dst := out.row(y)
			for x := 0; x < w; x++ {
				v := src[x]
				dst[3*x], dst[3*x+1], dst[3*x+2] = v, v, v
			}
		}
	case *image.Gray16:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			dst := out.row(y)
			for x := 0; x < w; x++ {
				v := clipGray16(src[2*x], src[2*x+1])
				dst[3*x], dst[3*x+1], dst[3*x+2] = v, v, v
			}
		}
	case *image.Paletted:
		pal := make([][3]uint8, len(m.Palette))
		for i, c := range m.Palette {
			pal[i] = straightRGB(c)
		}
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			dst := out.row(y)
			for x := 0; x < w; x++ {
				var c [3]uint8
				if int(src[x]) < len(pal) {
					c = pal[src[x]]
				}
				dst[3*x], dst[3*x+1], dst[3*x+2] = c[0], c[1], c[2]
			}
		}
	case *image.CMYK:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			dst := out.row(y)
			for x := 0; x < w; x++ {
				dst[3*x], dst[3*x+1], dst[3*x+2] = CMYKToRGB(src[4*x], src[4*x+1], src[4*x+2], src[4*x+3])
			}
		}
	default:
		for y := 0; y < h; y++ {
			dst := out.row(y)
			for x := 0; x < w; x++ {
				c := straightRGB(img.At(b.Min.X+x, b.Min.Y+y))
				dst[3*x], dst[3*x+1], dst[3*x+2] = c[0], c[1], c[2]
			}
		}
	}
	return out
}

// clipGray16 is Pillow's "I;16"→8-bit conversion of a big-endian 16-bit sample: values above 255
// saturate.
func clipGray16(hi, lo uint8) uint8 {
	if hi != 0 {
		return 255
	}
	return lo
}

// straightRGB returns a colour's non-premultiplied 8-bit R, G, B (alpha dropped).
func straightRGB(c color.Color) [3]uint8 {
	switch v := c.(type) {
	case color.NRGBA:
		return [3]uint8{v.R, v.G, v.B}
	case color.RGBA:
		if v.A == 0xff {
			return [3]uint8{v.R, v.G, v.B}
		}
	case color.Gray:
		return [3]uint8{v.Y, v.Y, v.Y}
	case color.Gray16:
		g := clipGray16(uint8(v.Y>>8), uint8(v.Y))
		return [3]uint8{g, g, g}
	case color.NRGBA64:
		return [3]uint8{uint8(v.R >> 8), uint8(v.G >> 8), uint8(v.B >> 8)}
	case color.CMYK:
		r, g, b := CMYKToRGB(v.C, v.M, v.Y, v.K)
		return [3]uint8{r, g, b}
	}
	n := color.NRGBA64Model.Convert(c).(color.NRGBA64)
	return [3]uint8{uint8(n.R >> 8), uint8(n.G >> 8), uint8(n.B >> 8)}
}

// CMYKToRGB is Pillow's cmyk2rgb: each channel is (255−k) − c·(255−k)/255, with Pillow's rounded
// division by 255. C, M, Y, K count ink (0 = none), as in image.CMYK.
func CMYKToRGB(c, m, y, k uint8) (r, g, b uint8) {
	nk := 255 - int(k)
	conv := func(v uint8) uint8 { return uint8(nk - muldiv255(int(v), nk)) }
	return conv(c), conv(m), conv(y)
}

// muldiv255 is round(a·b/255) for a, b in [0, 255], computed as Pillow's MULDIV255 macro does.
func muldiv255(a, b int) int {
	t := a*b + 128
	return ((t >> 8) + t) >> 8
}
