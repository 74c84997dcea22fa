package layout

import (
	"fmt"

	"github.com/matsurgery/matsurgery/formats"
)

// Expected lists every tensor a TinyLLaVA_Factory checkpoint of this config
// holds (dtype left empty), in the order the published checkpoints store
// them: vision tower, connector, language model. It is what synth writes and
// what inspect checks a checkpoint against.
func Expected(cfg *formats.ModelConfig) ([]formats.TensorSpec, error) {
	d, err := For(cfg.Family)
	if err != nil {
		return nil, err
	}
	var out []formats.TensorSpec
	add := func(name string, shape ...int) {
		s := make([]int64, len(shape))
		for i, x := range shape {
			s[i] = int64(x)
		}
		out = append(out, formats.TensorSpec{Name: name, Shape: s})
	}
	linear := func(stem string, outDim, inDim int, bias bool) {
		add(stem+".weight", outDim, inDim)
		if bias {
			add(stem+".bias", outDim)
		}
	}

	// SigLIP vision tower.
	v := cfg.Vision
	vp := VisionPrefix + "vision_model."
	add(vp+"embeddings.patch_embedding.weight", v.HiddenSize, v.NumChannels, v.PatchSize, v.PatchSize)
	add(vp+"embeddings.patch_embedding.bias", v.HiddenSize)
	add(vp+"embeddings.position_embedding.weight", v.NumPatches(), v.HiddenSize)
	for i := 0; i < v.NumLayers; i++ {
		lp := fmt.Sprintf("%sencoder.layers.%d.", vp, i)
		add(lp+"layer_norm1.weight", v.HiddenSize)
		add(lp+"layer_norm1.bias", v.HiddenSize)
		for _, p := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			linear(lp+"self_attn."+p, v.HiddenSize, v.HiddenSize, true)
		}
		add(lp+"layer_norm2.weight", v.HiddenSize)
		add(lp+"layer_norm2.bias", v.HiddenSize)
		linear(lp+"mlp.fc1", v.IntermediateSize, v.HiddenSize, true)
		linear(lp+"mlp.fc2", v.HiddenSize, v.IntermediateSize, true)
	}
	add(vp+"post_layernorm.weight", v.HiddenSize)
	add(vp+"post_layernorm.bias", v.HiddenSize)
	// The attention-pooling head (vision_use_head): stored, unused by TinyLLaVA.
	hp := vp + "head."
	add(hp+"probe", 1, 1, v.HiddenSize)
	add(hp+"attention.in_proj_weight", 3*v.HiddenSize, v.HiddenSize)
	add(hp+"attention.in_proj_bias", 3*v.HiddenSize)
	linear(hp+"attention.out_proj", v.HiddenSize, v.HiddenSize, true)
	add(hp+"layernorm.weight", v.HiddenSize)
	add(hp+"layernorm.bias", v.HiddenSize)
	linear(hp+"mlp.fc1", v.IntermediateSize, v.HiddenSize, true)
	linear(hp+"mlp.fc2", v.HiddenSize, v.IntermediateSize, true)

	// mlp2x_gelu connector.
	if cfg.ConnectorType != "" && cfg.ConnectorType != "mlp2x_gelu" {
		return nil, fmt.Errorf("connector_type %q is not supported (supported: mlp2x_gelu)", cfg.ConnectorType)
	}
	t := cfg.Text
	linear(ConnectorPrefix+"0", t.HiddenSize, v.HiddenSize, true)
	linear(ConnectorPrefix+"2", t.HiddenSize, t.HiddenSize, true)

	// Language model.
	h, di, dkv := t.HiddenSize, t.NumHeads*t.HeadDim, t.NumKVHeads*t.HeadDim
	add(d.ModelTensor(Embed, "weight"), t.VocabSize, h)
	for l := 0; l < t.NumLayers; l++ {
		norm := func(p Part) {
			add(d.LayerTensor(l, p, "weight"), h)
			if cfg.Family == formats.Phi {
				add(d.LayerTensor(l, p, "bias"), h)
			}
		}
		norm(InputNorm)
		linear(d.layerStem(l, AttnQ), di, h, d.AttnBias[AttnQ])
		linear(d.layerStem(l, AttnK), dkv, h, d.AttnBias[AttnK])
		linear(d.layerStem(l, AttnV), dkv, h, d.AttnBias[AttnV])
		linear(d.layerStem(l, AttnO), h, di, d.AttnBias[AttnO])
		if cfg.Family == formats.Phi {
			linear(d.layerStem(l, MLPUp), t.IntermediateSize, h, true)
			linear(d.layerStem(l, MLPDown), h, t.IntermediateSize, true)
		} else {
			norm(PostNorm)
			linear(d.layerStem(l, MLPGate), t.IntermediateSize, h, false)
			linear(d.layerStem(l, MLPUp), t.IntermediateSize, h, false)
			linear(d.layerStem(l, MLPDown), h, t.IntermediateSize, false)
		}
	}
	add(d.ModelTensor(FinalNorm, "weight"), h)
	if cfg.Family == formats.Phi {
		add(d.ModelTensor(FinalNorm, "bias"), h)
	}
	if !t.TieWordEmbeddings {
		linear(d.Model[LMHead], t.VocabSize, h, cfg.Family == formats.Phi)
	}
	return out, nil
}

func (d *Descriptor) layerStem(l int, p Part) string {
	return fmt.Sprintf("%s%d.%s", LayerPrefix, l, d.Layer[p])
}
