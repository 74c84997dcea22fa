package images

import (
	"fmt"
	"image"
)

// Mode says how a non-square picture becomes square before resizing: TinyLLaVA's image_aspect_ratio.
type Mode int

const (
	// Square resizes the picture to size×size directly, distorting its aspect ratio
	// (image_aspect_ratio "square", what TinyLLaVA-Phi-2-SigLIP-3.1B uses).
	Square Mode = iota
	// Pad first centres the picture on a square canvas of the mean colour, as TinyLLaVA's expand2square
	// does (image_aspect_ratio "pad", the legacy LLaVA setting), then resizes.
	Pad
)

// String returns TinyLLaVA's name of the mode.
func (m Mode) String() string {
	switch m {
	case Square:
		return "square"
	case Pad:
		return "pad"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode maps a config.json image_aspect_ratio to a Mode. TinyLLaVA treats every value other than
// "pad" and "anyres" as a plain resize; "anyres" (multi-crop tiling) is not supported here.
func ParseMode(aspect string) (Mode, error) {
	switch aspect {
	case "pad":
		return Pad, nil
	case "anyres":
		return 0, fmt.Errorf("image_aspect_ratio %q: anyres tiling is not supported (use square or pad)", aspect)
	}
	return Square, nil
}

// SigLIP's image_mean and image_std are 0.5 for every channel.
const (
	imageMean = 0.5
	imageStd  = 0.5
)

// PadColour is the canvas colour of Pad mode: TinyLLaVA's `tuple(int(x*255) for x in image_mean)`,
// 127 for SigLIP's mean 0.5.
const PadColour uint8 = 127 // int(0.5*255): Python's int() truncates 127.5

// normalized[v] is pixel value v as the processor hands it to the model: `(v/255 − mean)/std`
// evaluated in float64, rounded once to float32 (bit-identical to the golden pixel_values).
var normalized = func() (t [256]float32) {
	for v := range t {
		t[v] = float32((float64(v)/255 - imageMean) / imageStd)
	}
	return t
}()

// Normalize returns the model input value of an 8-bit sample: (v/255 − 0.5)/0.5 as float32.
func Normalize(v uint8) float32 { return normalized[v] }

// Preprocess turns img into the vision tower's input: a [3, size, size] CHW float32 tensor, flattened.
// The picture is converted to RGB (ToRGB), made square according to mode, resized with Pillow's
// bicubic (Resize) and normalised with (v/255 − 0.5)/0.5.
func Preprocess(img image.Image, size int, mode Mode) ([]float32, error) {
	out := make([]float32, 3*size*size)
	if err := PreprocessInto(out, img, size, mode); err != nil {
		return nil, err
	}
	return out, nil
}

// PreprocessInto is Preprocess writing into dst, which must hold exactly 3·size·size values.
func PreprocessInto(dst []float32, img image.Image, size int, mode Mode) error {
	if size <= 0 {
		return fmt.Errorf("preprocess: size %d must be positive", size)
	}
	if len(dst) != 3*size*size {
		return fmt.Errorf("preprocess: destination holds %d values, want 3×%d×%d = %d", len(dst), size, size, 3*size*size)
	}
	src := ToRGB(img)
	w, h := src.Rect.Dx(), src.Rect.Dy()
	if w <= 0 || h <= 0 {
		return fmt.Errorf("preprocess: the image is empty (%d×%d)", w, h)
	}
	pix := src.packed()
	switch mode {
	case Square:
	case Pad:
		pix, w, h = expandToSquare(pix, w, h, PadColour)
	default:
		return fmt.Errorf("preprocess: unknown mode %v", mode)
	}
	resized := make([]uint8, 3*size*size)
	resizeRGB(pix, w, h, resized, size, size)
	plane := size * size
	r, g, b := dst[:plane], dst[plane:2*plane], dst[2*plane:]
	for i := 0; i < plane; i++ {
		px := resized[3*i : 3*i+3 : 3*i+3]
		r[i], g[i], b[i] = normalized[px[0]], normalized[px[1]], normalized[px[2]]
	}
	return nil
}

// ExpandToSquare is TinyLLaVA's expand2square on an RGB image: the picture centred on a square canvas
// of colour (bg, bg, bg), its offset rounded down ((long − short) // 2). A square image is returned as is.
func ExpandToSquare(img image.Image, bg uint8) *RGB {
	src := ToRGB(img)
	w, h := src.Rect.Dx(), src.Rect.Dy()
	if w == h {
		return src
	}
	pix, n, _ := expandToSquare(src.packed(), w, h, bg)
	return &RGB{Pix: pix, Stride: 3 * n, Rect: image.Rect(0, 0, n, n)}
}

// expandToSquare pads packed RGB pixels (w×h) to a square; it returns them unchanged when square.
func expandToSquare(pix []uint8, w, h int, bg uint8) ([]uint8, int, int) {
	if w == h {
		return pix, w, h
	}
	n := max(w, h)
	out := make([]uint8, 3*n*n)
	for i := range out {
		out[i] = bg
	}
	x0, y0 := (n-w)/2, (n-h)/2
	for y := 0; y < h; y++ {
		copy(out[3*(n*(y0+y)+x0):], pix[3*w*y:3*w*(y+1)])
	}
	return out, n, n
}
