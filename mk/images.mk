# Container images (issue 3, docs/containers.md).
#   make images                      docker: debootstrap base + wheelhouse + --network none builds
#                                    of vmpower-pipeline, -collect and -serve (IMAGES=serve: only that)
#   make images ENGINE=podman        the same with podman (build --timestamp 0)
#   make images NO_CACHE=1           rebuild without the layer cache
#   make images PUSH_REGISTRY=<reg>  also push and record the manifest digests (sites with a registry)
#   make check-images                provenance records vs containers/images.lock.json
.PHONY: images check-images ci-docker

ENGINE ?= docker

images:
	ENGINE=$(ENGINE) NO_CACHE=$(NO_CACHE) IMAGES="$(IMAGES)" PUSH_REGISTRY=$(PUSH_REGISTRY) bash scripts/build-images.sh

check-images: $(VENV)/.installed
	$(VPY) -m vmpower check-images --config config.yaml results/provenance

ci-docker: $(VENV)/.installed
	bash scripts/ci-docker.sh
