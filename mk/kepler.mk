# kepler-model-server export (docs/deploy.md, "With Kepler itself").
#   make kepler-db   the linear models of results/models that Kepler can read, as a
#                    kepler-model-server 0.7 pipeline in results/kepler-db/<export.kepler_db_pipeline>/
#                    (run `make run` first; the excluded models and why are in vmpower_export.json)
.PHONY: kepler-db

kepler-db: venv
	$(VPY) -m vmpower export-kepler-db --config config.yaml --models results/models --out results/kepler-db
