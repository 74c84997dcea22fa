package reference

import (
	"math"
	"slices"
)

// Backward passes of the Mamba-2 mixer's own operations (kernels.MambaGrad),
// in float64, written straight from the chain rule. Each takes the
// forward's inputs and the gradient of its output and returns the
// gradients of every input, parameter gradients included (whether or not
// the forward was given that parameter: a nil bias is a zero bias, whose
// gradient is still defined).

// SiLUGrad is the derivative of SiLU: σ(x)·(1 + x·(1 − σ(x))).
func SiLUGrad(x float64) float64 {
	s := Sigmoid(x)
	return s * (1 + x*(1-s))
}

// CausalConv1dBackward is the gradient of CausalConv1d(u, weight, bias,
// silu) given dout [b,l,c]: du [b,l,c], dweight [c,k] and dbias [c]
// (bias may be nil; dbias is the gradient with respect to a bias all the
// same).
func CausalConv1dBackward(dout, u, weight, bias *Array, silu bool) (du, dweight, dbias *Array, err error) {
	if _, err := CausalConv1d(u, weight, bias, false); err != nil {
		return nil, nil, nil, err
	}
	if err := want(dout, "causalconv1d backward dout", u.Shape...); err != nil {
		return nil, nil, nil, err
	}
	nb, l, c := u.Shape[0], u.Shape[1], u.Shape[2]
	k := weight.Shape[1]
	du, dweight, dbias = New(nb, l, c), New(c, k), New(c)
	for b := 0; b < nb; b++ {
		for t := 0; t < l; t++ {
			for ch := 0; ch < c; ch++ {
				// Recompute the pre-activation, then push the gradient back
				// to every input it read.
				var pre float64
				if bias != nil {
					pre = bias.Data[ch]
				}
				for j := 0; j < k; j++ {
					if tt := t - k + 1 + j; tt >= 0 {
						pre += weight.Data[ch*k+j] * u.Data[(b*l+tt)*c+ch]
					}
				}
				g := dout.Data[(b*l+t)*c+ch]
				if silu {
					g *= SiLUGrad(pre)
				}
				dbias.Data[ch] += g
				for j := 0; j < k; j++ {
					if tt := t - k + 1 + j; tt >= 0 {
						dweight.Data[ch*k+j] += g * u.Data[(b*l+tt)*c+ch]
						du.Data[(b*l+tt)*c+ch] += g * weight.Data[ch*k+j]
					}
				}
			}
		}
	}
	return du, dweight, dbias, nil
}

// DtSoftplusBackward is the gradient of DtSoftplus(dtRaw, bias) given ddt
// [.., h]: dRaw = ddt·σ(dtRaw + bias), and dbias [h] = Σ over the rows of
// dRaw (bias may be nil). σ is softplus' derivative everywhere, also past
// the forward's threshold of 20 where softplus(x) is taken as x (there the
// two differ by less than 3e−9).
func DtSoftplusBackward(ddt, dtRaw, bias *Array) (dRaw, dbias *Array, err error) {
	if _, err := DtSoftplus(dtRaw, bias); err != nil {
		return nil, nil, err
	}
	if err := want(ddt, "dtsoftplus backward ddt", dtRaw.Shape...); err != nil {
		return nil, nil, err
	}
	rows, h, _ := lastDim(dtRaw, "dtsoftplus dt")
	dRaw, dbias = New(dtRaw.Shape...), New(h)
	for r := 0; r < rows; r++ {
		for j := 0; j < h; j++ {
			v := dtRaw.Data[r*h+j]
			if bias != nil {
				v += bias.Data[j]
			}
			g := ddt.Data[r*h+j] * Sigmoid(v)
			dRaw.Data[r*h+j] = g
			dbias.Data[j] += g
		}
	}
	return dRaw, dbias, nil
}

// GatedRMSNormBackward is the gradient of GatedRMSNorm(y, z, weight,
// groupSize, eps) given dout: dy, dz (nil when z is nil) and dweight
// [last]. Per group of n channels, with g = y·silu(z) (or y),
// r = 1/√(mean(g²)+eps) and out = g·r·w:
//
//	∂L/∂g_j = r·w_j·dout_j − g_j·r³/n·Σ_i w_i·dout_i·g_i
//	dweight_j = Σ_rows dout_j·g_j·r
//
// then dy = ∂L/∂g·silu(z) and dz = ∂L/∂g·y·silu'(z).
func GatedRMSNormBackward(dout, y, z, weight *Array, groupSize int, eps float64) (dy, dz, dweight *Array, err error) {
	if _, err := GatedRMSNorm(y, z, weight, groupSize, eps); err != nil {
		return nil, nil, nil, err
	}
	if err := want(dout, "gatedrmsnorm backward dout", y.Shape...); err != nil {
		return nil, nil, nil, err
	}
	rows, n, _ := lastDim(y, "gatedrmsnorm y")
	dy, dweight = New(y.Shape...), New(n)
	if z != nil {
		dz = New(z.Shape...)
	}
	g := make([]float64, groupSize)
	for r := 0; r < rows; r++ {
		for c0 := 0; c0 < n; c0 += groupSize {
			var ms float64
			for j := 0; j < groupSize; j++ {
				v := y.Data[r*n+c0+j]
				if z != nil {
					v *= SiLUValue(z.Data[r*n+c0+j])
				}
				g[j] = v
				ms += v * v
			}
			ms /= float64(groupSize)
			inv := 1 / math.Sqrt(ms+eps)
			var proj float64 // Σ w·dout·g
			for j := 0; j < groupSize; j++ {
				proj += weight.Data[c0+j] * dout.Data[r*n+c0+j] * g[j]
			}
			for j := 0; j < groupSize; j++ {
				i := r*n + c0 + j
				dweight.Data[c0+j] += dout.Data[i] * g[j] * inv
				dg := inv*weight.Data[c0+j]*dout.Data[i] - g[j]*inv*inv*inv/float64(groupSize)*proj
				if z == nil {
					dy.Data[i] = dg
					continue
				}
				dy.Data[i] = dg * SiLUValue(z.Data[i])
				dz.Data[i] = dg * y.Data[i] * SiLUGrad(z.Data[i])
			}
		}
	}
	return dy, dz, dweight, nil
}

// SSDGrads are the gradients of a scan's inputs, shaped like them: DX
// [b,l,h,p], DDt [b,l,h], DA [h], DB and DC [b,l,g,n] (a group's
// gradient sums over the heads that read it) and DD [h].
type SSDGrads struct {
	DX, DDt, DA, DB, DC, DD *Array
}

// SSDBackward is the gradient of SSDRecurrence(x, dt, A, B, C, D, nil) —
// a zero initial state — given dy [b,l,h,p]. It keeps every state of the
// forward walk and runs the recurrent backward of SPEC §3 from the last
// token to the first, with G = ∂L/∂S_t, x̄ = dt·x and a = dt·A:
//
//	G += gy_t ⊗ C_t;  dC_t += S_tᵀ·gy_t;  dx̄_t = G·B_t;  dB_t += Gᵀ·x̄_t;
//	da_t = exp(a_t)·⟨G, S_{t−1}⟩;  G ← exp(a_t)·G
//
// then dx = dt·dx̄ + D·gy, ddt = A·da + ⟨dx̄, x⟩, dA = Σ dt·da and
// dD = Σ ⟨gy, x⟩. D may be nil (zero); DD is returned all the same.
// Nothing restricts the signs of dt and A here: it is the gradient of the
// recurrence wherever it is evaluated.
func SSDBackward(dy, x, dt, A, B, C, D *Array) (*SSDGrads, error) {
	s, err := CheckSSD(x, dt, A, B, C, D, nil)
	if err != nil {
		return nil, err
	}
	if err := want(dy, "ssd backward dy", x.Shape...); err != nil {
		return nil, err
	}
	H, P, G, N, L := s.Heads, s.HeadDim, s.Groups, s.DState, s.Len
	rep := H / G
	gr := &SSDGrads{
		DX: New(x.Shape...), DDt: New(dt.Shape...), DA: New(H),
		DB: New(B.Shape...), DC: New(C.Shape...), DD: New(H),
	}
	states := make([][]float64, L+1) // states[t+1] = S_t, states[0] = 0
	for b := 0; b < s.Batch; b++ {
		for h := 0; h < H; h++ {
			g := h / rep
			xi := func(t, p int) int { return ((b*L+t)*H+h)*P + p }
			gi := func(t, n int) int { return ((b*L+t)*G+g)*N + n }
			ti := func(t int) int { return (b*L+t)*H + h }
			states[0] = make([]float64, P*N)
			for t := 0; t < L; t++ {
				d := dt.Data[ti(t)]
				e := math.Exp(d * A.Data[h])
				S := slices.Clone(states[t])
				for p := 0; p < P; p++ {
					for n := 0; n < N; n++ {
						S[p*N+n] = e*S[p*N+n] + d*x.Data[xi(t, p)]*B.Data[gi(t, n)]
					}
				}
				states[t+1] = S
			}
			Gs := make([]float64, P*N)
			for t := L - 1; t >= 0; t-- {
				d := dt.Data[ti(t)]
				a := d * A.Data[h]
				St, Sp := states[t+1], states[t]
				for p := 0; p < P; p++ {
					gy := dy.Data[xi(t, p)]
					for n := 0; n < N; n++ {
						Gs[p*N+n] += gy * C.Data[gi(t, n)]
						gr.DC.Data[gi(t, n)] += St[p*N+n] * gy
					}
				}
				var dot, ddt float64
				for p := 0; p < P; p++ {
					var dxb float64
					for n := 0; n < N; n++ {
						dxb += Gs[p*N+n] * B.Data[gi(t, n)]
						gr.DB.Data[gi(t, n)] += Gs[p*N+n] * d * x.Data[xi(t, p)]
						dot += Gs[p*N+n] * Sp[p*N+n]
					}
					gy := dy.Data[xi(t, p)]
					dx := d * dxb
					if D != nil {
						dx += D.Data[h] * gy
					}
					gr.DX.Data[xi(t, p)] = dx
					ddt += dxb * x.Data[xi(t, p)]
					gr.DD.Data[h] += gy * x.Data[xi(t, p)]
				}
				da := math.Exp(a) * dot
				gr.DDt.Data[ti(t)] = A.Data[h]*da + ddt
				gr.DA.Data[h] += d * da
				for i := range Gs {
					Gs[i] *= math.Exp(a)
				}
			}
		}
	}
	return gr, nil
}
