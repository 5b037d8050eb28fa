package estimator

import (
	"fmt"
	"math"
)

const (
	treesFile   = "trees.json"
	treesFormat = "vmpower-trees/1"
)

// tree is one regression tree as parallel arrays indexed by node id (trees.json).
type tree struct {
	Feature     []int     `json:"feature"`
	Threshold   []float64 `json:"threshold"`
	Mode        []string  `json:"mode"`
	True        []int     `json:"true"`
	False       []int     `json:"false"`
	MissingTrue []int     `json:"missing_true"`
	Leaf        []float64 `json:"leaf"`
}

type ensembleDoc struct {
	Mean      []float64 `json:"mean"`
	Scale     []float64 `json:"scale"`
	BaseValue float64   `json:"base_value"`
	Trees     []tree    `json:"trees"`
}

type treesDoc struct {
	Format   string                 `json:"format"`
	Features []string               `json:"features"`
	Zones    map[string]ensembleDoc `json:"zones"`
}

// ensembleZone evaluates the exported ONNX graph exactly: (x - mean) / scale in float64, cast
// to float32, trees compared and leaf weights summed in float32 in tree order, plus the base
// value (onnxruntime's TreeEnsembleRegressor on float input).
type ensembleZone struct {
	mean, scale []float64
	base        float32
	trees       []compiledTree
}

type compiledTree struct {
	feature     []int
	threshold   []float32
	leq, leaf   []bool
	missingTrue []bool
	next        [][2]int // [true, false] child
	weight      []float32
}

func (z *ensembleZone) watts(x []float64) float64 {
	xs := make([]float32, len(x))
	for i, v := range x {
		xs[i] = float32((v - z.mean[i]) / z.scale[i])
	}
	var sum float32
	for t := range z.trees {
		sum += z.trees[t].eval(xs)
	}
	return float64(sum + z.base)
}

func (t *compiledTree) eval(xs []float32) float32 {
	k := 0
	for !t.leaf[k] {
		v := xs[t.feature[k]]
		var goTrue bool
		switch {
		case v != v: // NaN: the node's missing-value direction
			goTrue = t.missingTrue[k]
		case t.leq[k]:
			goTrue = v <= t.threshold[k]
		default:
			goTrue = v < t.threshold[k]
		}
		if goTrue {
			k = t.next[k][0]
		} else {
			k = t.next[k][1]
		}
	}
	return t.weight[k]
}

func (e *Estimator) loadTrees(path string, meta metadata) error {
	var doc treesDoc
	if err := readJSON(path, &doc); err != nil {
		return err
	}
	if doc.Format != treesFormat {
		return fmt.Errorf("%s: format %q, this reader knows %q", path, doc.Format, treesFormat)
	}
	e.features = doc.Features
	e.models = map[string]zoneModel{}
	for _, zone := range e.zones {
		zd, ok := doc.Zones[zone]
		if !ok {
			return fmt.Errorf("%s: no ensemble for zone %s", path, zone)
		}
		ez, err := compileZone(zd, len(doc.Features))
		if err != nil {
			return fmt.Errorf("%s: zone %s: %w", path, zone, err)
		}
		e.models[zone] = ez
	}
	return e.loadRanges(meta)
}

func compileZone(zd ensembleDoc, width int) (*ensembleZone, error) {
	if len(zd.Mean) != width || len(zd.Scale) != width {
		return nil, fmt.Errorf("scaler has %d/%d values for %d features", len(zd.Mean), len(zd.Scale), width)
	}
	ez := &ensembleZone{mean: zd.Mean, scale: zd.Scale, base: float32(zd.BaseValue)}
	for i, td := range zd.Trees {
		ct, err := compileTree(td, width)
		if err != nil {
			return nil, fmt.Errorf("tree %d: %w", i, err)
		}
		ez.trees = append(ez.trees, ct)
	}
	return ez, nil
}

// compileTree checks the arrays (lengths, child and feature indices, modes) so that eval can
// neither index out of range nor loop: children must point forward.
func compileTree(td tree, width int) (compiledTree, error) {
	n := len(td.Mode)
	for _, arr := range [][]int{td.Feature, td.True, td.False, td.MissingTrue} {
		if len(arr) != n {
			return compiledTree{}, fmt.Errorf("arrays of unequal length")
		}
	}
	if len(td.Threshold) != n || len(td.Leaf) != n || n == 0 {
		return compiledTree{}, fmt.Errorf("arrays of unequal length")
	}
	ct := compiledTree{feature: td.Feature, threshold: make([]float32, n), leq: make([]bool, n),
		leaf: make([]bool, n), missingTrue: make([]bool, n), next: make([][2]int, n), weight: make([]float32, n)}
	for k := 0; k < n; k++ {
		ct.threshold[k], ct.weight[k] = float32(td.Threshold[k]), float32(td.Leaf[k])
		ct.missingTrue[k] = td.MissingTrue[k] != 0
		ct.next[k] = [2]int{td.True[k], td.False[k]}
		switch td.Mode[k] {
		case "LEAF":
			ct.leaf[k] = true
			continue
		case "LEQ":
			ct.leq[k] = true
		case "LT":
		default:
			return compiledTree{}, fmt.Errorf("node %d: mode %q", k, td.Mode[k])
		}
		if td.Feature[k] < 0 || td.Feature[k] >= width {
			return compiledTree{}, fmt.Errorf("node %d: feature %d of %d", k, td.Feature[k], width)
		}
		for _, c := range ct.next[k] {
			if c <= k || c >= n {
				return compiledTree{}, fmt.Errorf("node %d: child %d", k, c)
			}
		}
	}
	return ct, nil
}

func (e *Estimator) loadRanges(meta metadata) error {
	ranges := meta.TrainingData.FeatureRanges
	if len(ranges) == 0 {
		return nil
	}
	e.lo, e.hi = make([]float64, len(e.features)), make([]float64, len(e.features))
	for i, name := range e.features {
		r, ok := ranges[name]
		if !ok || math.IsNaN(r.Min) || r.Min > r.Max {
			e.lo, e.hi = nil, nil
			return fmt.Errorf("metadata.json: no valid training range for feature %q", name)
		}
		e.lo[i], e.hi[i] = r.Min, r.Max
	}
	return nil
}
