package estimator

import (
	"encoding/json"
	"fmt"
)

const weightFile = "weight.json"

// Kepler's weight.json: per zone, a bias and per-feature {scale, weight} in Kepler's names.
type keplerWeights struct {
	AllWeights struct {
		BiasWeight         *float64 `json:"Bias_Weight"`
		NumericalVariables map[string]struct {
			Scale  float64 `json:"scale"`
			Weight float64 `json:"weight"`
		} `json:"Numerical_Variables"`
	} `json:"All_Weights"`
}

// linearZone evaluates Kepler's formula: bias + sum(x / scale * weight), where a term with
// scale 0 contributes 0 (Kepler v0.7's linear regressor).
type linearZone struct {
	bias           float64
	scale, weights []float64
}

func (l *linearZone) watts(x []float64) float64 {
	sum := l.bias
	for i, v := range x {
		if l.scale[i] != 0 {
			sum += v / l.scale[i] * l.weights[i]
		}
	}
	return sum
}

func (e *Estimator) loadWeights(path string) error {
	var doc map[string]json.RawMessage
	if err := readJSON(path, &doc); err != nil {
		return err
	}
	e.models = map[string]zoneModel{}
	for i, zone := range e.zones {
		var zw keplerWeights
		raw, ok := doc[zone]
		if !ok {
			return fmt.Errorf("%s: no weights for zone %s", path, zone)
		}
		if err := json.Unmarshal(raw, &zw); err != nil || zw.AllWeights.BiasWeight == nil {
			return fmt.Errorf("%s: zone %s is not Kepler's All_Weights form", path, zone)
		}
		vars := zw.AllWeights.NumericalVariables
		names := sortedKeys(vars)
		if i == 0 {
			e.features = names
		} else if fmt.Sprint(names) != fmt.Sprint(e.features) {
			return fmt.Errorf("%s: zone %s reads %v, zone %s reads %v", path, zone, names, e.zones[0], e.features)
		}
		lz := &linearZone{bias: *zw.AllWeights.BiasWeight}
		for _, name := range names {
			lz.scale = append(lz.scale, vars[name].Scale)
			lz.weights = append(lz.weights, vars[name].Weight)
		}
		e.models[zone] = lz
	}
	return nil
}
