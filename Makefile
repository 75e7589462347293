# psvae quick start:  make test   (build everything, run every test)
#                     make demo   (the full pipeline on the built-in dataset)
# Both install missing Debian packages first when run as root (apt-get update once).
# Variables: BUILD (build dir, default build), JOBS (parallel jobs), CMAKE_ARGS (extra cmake flags,
# e.g. -DPSVAE_CUDA_ARCHS=90a-real -DCUDNN_ROOT=/path), CUDA_INCLUDE (where test-emu looks for
# the CUDA headers; without them it is skipped; default /usr/local/cuda/include).

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=
GENERATOR := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

# Debian packages the build needs (CUDA comes with the toolkit, not from here). OpenMPI: multi-rank
# training (docs/distributed.md); its test runs `mpirun -np 2`.
DEB_PACKAGES := cmake ninja-build ccache g++ libeigen3-dev libfmt-dev doctest-dev nlohmann-json3-dev \
  libyaml-cpp-dev libcli11-dev libstb-dev libopenmpi-dev openmpi-bin

.PHONY: all deps configure build test asan-tensor test-emu test-asan demo clean format ptxas-report

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	@echo "make build: $$(date -u +%T) building $(BUILD)"
	cmake --build $(BUILD) -j $(JOBS)

# The whole suite, then the tensor-layer tests (safetensors parsing of malformed files) again
# under AddressSanitizer + UBSan.
# Each phase prints the UTC time it starts, so a CI log shows where its minutes go.
test: build
	@echo "make test: $$(date -u +%T) build done; the suite"
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)
	@echo "make test: $$(date -u +%T) asan-tensor"
	@$(MAKE) --no-print-directory asan-tensor
	@echo "make test: $$(date -u +%T) test-emu"
	@$(MAKE) --no-print-directory test-emu
	@echo "make test: $$(date -u +%T) done"

# The CUDA kernel tests on the host emulator (cuda_emu/, docs/kernels.md "The emulator"): the CUDA
# sources compiled as C++ and every kernel run against the CPU, so a machine without a GPU still
# runs them; with them the whole DiT and PS-VAE training steps on CUDA against the CPU's, and the
# whole `psvae demo --tiny` pipeline on CUDA against the CPU run. Then three race passes over the
# kernel tests: the emulator's blocks and threads in shuffled order (missing barriers); warps
# order, one warp running ahead through its warp collectives (barriers missing between stores and
# a collective that reads them); and the kernels that use cp.async and wgmma with those landing
# and reading at the opposite extreme (PSVAE_EMU_ASYNC=eager: a buffer refilled too early). The
# race passes leave out the 4096-token attention case (EMU_RACE_SKIP): alone it took 70 s of each
# pass, and the shorter cases already cover every tile edge and hand-off it has.
# The passes are independent processes, run $(JOBS) at a time, longest first; -O prints each
# pass's output whole when it ends. Needs the CUDA headers only; skipped with a message when there
# are none.
CUDA_INCLUDE ?= /usr/local/cuda/include
EMU_BIN = $(BUILD)-emu/bin
EMU_RACE_SKIP := *4096-token*
EMU_PASSES := emu-kernels emu-shuffle emu-warps emu-async emu-models
.PHONY: $(EMU_PASSES)
# $(call emu_kernel_tests,ENV,ARGS): the CUDA cases of test_tensor and test_ops under ENV.
emu_kernel_tests = for t in test_tensor test_ops; do \
	  $(1) $(EMU_BIN)/$$t --no-intro=true -tc="*cuda*" $(2) || exit 1; \
	done

test-emu: deps
	@if [ ! -f $(CUDA_INCLUDE)/cuda_runtime.h ]; then echo "test-emu: no CUDA headers in $(CUDA_INCLUDE); skipped"; exit 0; fi; \
	[ -f $(BUILD)-emu/CMakeCache.txt ] || cmake -S . -B $(BUILD)-emu $(GENERATOR) -DCMAKE_BUILD_TYPE=Release \
	  -DPSVAE_CUDA_EMU=ON -DPSVAE_MPI=OFF > /dev/null && \
	cmake --build $(BUILD)-emu -j $(JOBS) --target test_tensor test_ops test_dit test_psvae test_train psvae && \
	echo "test-emu: $$(date -u +%T) built; the CUDA tests on the emulator, $(JOBS) passes at a time" && \
	$(MAKE) --no-print-directory -j $(JOBS) -O $(EMU_PASSES)

emu-kernels:
	@echo "test-emu: $$(date -u +%T) the kernel tests"
	@$(call emu_kernel_tests,,)

emu-models:
	@echo "test-emu: $$(date -u +%T) the models' CUDA steps and the CUDA demo against the CPU"
	@for t in test_dit test_psvae test_train; do $(EMU_BIN)/$$t --no-intro=true -tc="*cuda*" || exit 1; done

emu-shuffle:
	@echo "test-emu: $$(date -u +%T) the kernel tests with blocks and threads in shuffled order (races)"
	@$(call emu_kernel_tests,PSVAE_EMU_ORDER=shuffle PSVAE_EMU_SEED=1,-tce="$(EMU_RACE_SKIP)")

emu-warps:
	@echo "test-emu: $$(date -u +%T) the kernel tests with one warp at a time running ahead (races across warp collectives)"
	@$(call emu_kernel_tests,PSVAE_EMU_ORDER=warps,-tce="$(EMU_RACE_SKIP)")

emu-async:
	@echo "test-emu: $$(date -u +%T) the async-copy kernels (GEMM, attention) with copies landing early and wgmma reading late"
	@PSVAE_EMU_ASYNC=eager $(EMU_BIN)/test_ops --no-intro=true -tc="cuda gemm*,cuda attention*" -tce="$(EMU_RACE_SKIP)"

asan-tensor: deps
	@[ -f $(BUILD)-asan/CMakeCache.txt ] || cmake -S . -B $(BUILD)-asan $(GENERATOR) \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPSVAE_CUDA=OFF -DPSVAE_SANITIZE=address > /dev/null
	cmake --build $(BUILD)-asan -j $(JOBS) --target test_tensor
	ASAN_OPTIONS=detect_leaks=1 $(BUILD)-asan/bin/test_tensor --no-intro=true

# Every suite under AddressSanitizer + UBSan (slower; not part of CI's make test).
test-asan: deps
	@[ -f $(BUILD)-asan/CMakeCache.txt ] || cmake -S . -B $(BUILD)-asan $(GENERATOR) \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPSVAE_CUDA=OFF -DPSVAE_SANITIZE=address > /dev/null
	cmake --build $(BUILD)-asan -j $(JOBS)
	ctest --test-dir $(BUILD)-asan --output-on-failure -j $(JOBS)

# The whole pipeline on the built-in dataset (docs/user-guide.md, "make demo"): builds only the
# psvae binary (not the test suites), then trains stages 0-3 and writes out/demo/report.html and
# metrics.json; exits 1 when a target is missed. DEMO_ARGS is passed on, e.g.
# DEMO_ARGS="--threads 2 --out /tmp/demo" or DEMO_ARGS=--tiny (seconds, no targets).
DEMO_ARGS ?=
demo: configure
	cmake --build $(BUILD) -j $(JOBS) --target psvae
	$(BUILD)/bin/psvae demo $(DEMO_ARGS)

# Registers, spills and static shared memory of every CUDA kernel for sm_90, from ptxas (compile
# time, no GPU; docs/kernels.md, "Registers and spills"). Needs $(BUILD) configured with nvcc.
ptxas-report: configure
	python3 bench/ptxas_report.py --build $(BUILD) --jobs $(JOBS)

format:
	find tensor kernels autograd nn psvae dit train cuda_emu tests bench -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \
	  | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-emu
