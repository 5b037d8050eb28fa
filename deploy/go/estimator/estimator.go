// Package estimator runs vmpower's exported models natively in Go (EP-003 FR3), with the
// standard library only: linear models from Kepler's weight.json, tree ensembles (gradient
// boosting, XGBoost) from the portable trees.json that `vmpower export` writes next to the ONNX
// files. KNN models are ONNX-only: LoadModels refuses them with a clear error.
package estimator

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Zones of the CPU power model (EP-003).
const (
	ZonePackage = "package"
	ZoneCore    = "core"
	ZoneDRAM    = "dram"
	ZoneUncore  = "uncore"
)

// VMFeatures maps a feature name to its value. The loaded model names the features it reads
// (FeatureNames); a feature it does not find counts as 0 for weight.json (Kepler's rule) and
// is an error for trees.json.
type VMFeatures map[string]float64

// VMPowerMetrics is one estimate (EP-003's VMPowerMetrics).
type VMPowerMetrics struct {
	NodeCPUWatts map[string]float64 `json:"node_cpu_watts"`
	ModelVersion string             `json:"model_version"`
	// Share of the features inside the training data's [min, max]; -1 when the model has no
	// training ranges under its input names (weight.json uses Kepler's names).
	Confidence float64            `json:"confidence"`
	Features   map[string]float64 `json:"features"`
}

// PowerEstimator is EP-003's Go inference interface.
type PowerEstimator interface {
	EstimatePower(features VMFeatures) (VMPowerMetrics, error)
	LoadModels(modelPath string) error
	GetSupportedZones() []string
	GetModelVersion() string
}

// zoneModel gives one zone's watts for the model's input vector.
type zoneModel interface {
	watts(x []float64) float64
}

// Estimator implements PowerEstimator for one exported model directory.
type Estimator struct {
	name     string
	version  string
	features []string
	zones    []string
	models   map[string]zoneModel
	lo, hi   []float64 // training ranges in features order; nil when unknown
}

var _ PowerEstimator = (*Estimator)(nil)

// New returns an Estimator with no model loaded.
func New() *Estimator { return &Estimator{} }

type metadata struct {
	ModelName    string   `json:"model_name"`
	Zones        []string `json:"zones"`
	Features     []string `json:"features"`
	TrainingData struct {
		FeatureRanges map[string]struct {
			Min float64 `json:"min"`
			Max float64 `json:"max"`
		} `json:"feature_ranges"`
	} `json:"training_data"`
}

// LoadModels loads an exported model directory (results/models/<type>/<group>/<name>/) after
// checking every file against its manifest.sha256. On error the previous model stays loaded.
func (e *Estimator) LoadModels(modelPath string) error {
	version, err := verifyManifest(modelPath)
	if err != nil {
		return err
	}
	var meta metadata
	if err := readJSON(filepath.Join(modelPath, "metadata.json"), &meta); err != nil {
		return err
	}
	next := &Estimator{name: meta.ModelName, version: version, zones: meta.Zones}
	if fileExists(filepath.Join(modelPath, treesFile)) {
		err = next.loadTrees(filepath.Join(modelPath, treesFile), meta)
	} else if fileExists(filepath.Join(modelPath, weightFile)) {
		err = next.loadWeights(filepath.Join(modelPath, weightFile))
	} else {
		err = fmt.Errorf("%s: neither %s nor %s: this model (e.g. KNN) runs with ONNX only", modelPath, treesFile, weightFile)
	}
	if err != nil {
		return err
	}
	*e = *next
	return nil
}

// EstimatePower gives every zone's watts for one sample.
func (e *Estimator) EstimatePower(features VMFeatures) (VMPowerMetrics, error) {
	if e.models == nil {
		return VMPowerMetrics{}, fmt.Errorf("no model loaded")
	}
	x, err := e.vector(features)
	if err != nil {
		return VMPowerMetrics{}, err
	}
	out := VMPowerMetrics{NodeCPUWatts: map[string]float64{}, ModelVersion: e.version, Confidence: -1,
		Features: map[string]float64{}}
	for i, name := range e.features {
		out.Features[name] = x[i]
	}
	for _, zone := range e.zones {
		out.NodeCPUWatts[zone] = e.models[zone].watts(x)
	}
	if e.lo != nil {
		inside := 0
		for i, v := range x {
			if v >= e.lo[i] && v <= e.hi[i] {
				inside++
			}
		}
		out.Confidence = float64(inside) / float64(len(x))
	}
	return out, nil
}

// GetSupportedZones lists the loaded model's zones in its own order.
func (e *Estimator) GetSupportedZones() []string { return append([]string(nil), e.zones...) }

// GetModelVersion is the model's content version: the first 12 hex digits of the sha256 of its
// manifest (the same version `vmpower serve` publishes in kepler_vm_model_version).
func (e *Estimator) GetModelVersion() string { return e.version }

// ModelName is the exported model's name (e.g. XGBRegressorTrainer_<node_type>).
func (e *Estimator) ModelName() string { return e.name }

// FeatureNames lists the inputs the loaded model reads, in its input order.
func (e *Estimator) FeatureNames() []string { return append([]string(nil), e.features...) }

func (e *Estimator) vector(features VMFeatures) ([]float64, error) {
	x := make([]float64, len(e.features))
	for i, name := range e.features {
		v, ok := features[name]
		if !ok && e.strict() {
			return nil, fmt.Errorf("feature %q is missing", name)
		}
		x[i] = v
	}
	return x, nil
}

// strict: tree models need every input; Kepler's weight.json rule reads a missing one as 0.
func (e *Estimator) strict() bool {
	for _, m := range e.models {
		_, linear := m.(*linearZone)
		return !linear
	}
	return true
}

func readJSON(path string, v interface{}) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
