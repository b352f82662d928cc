# ibcm — `make help` lists the targets.
#
# smallstep's certificate authority is built with its own database backends compiled out:
# ibcm's site store (internal/sitedb + ca/store.go) replaces them. Every go command below
# gets these tags; set them the same way when you run go yourself.
TAGS   := nobadger,nomysql,nopgx,nobbolt
GO     ?= go
GOTAGS := -tags $(TAGS)
RUNDIR ?= .run/site
# what --version prints (the Go toolchain's build info fills in what git cannot)
VERSION ?= $(shell git describe --tags --dirty 2>/dev/null || echo devel)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LDFLAGS := -X github.com/ibcm-project/ibcm/internal/cliapp.version=$(VERSION) -X github.com/ibcm-project/ibcm/internal/cliapp.commit=$(COMMIT)

.DEFAULT_GOAL := help
.PHONY: help build man run test check bench integration deps fuzz fmt vet unit clean console-assets

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/ibcm and bin/ibcm-client
	$(GO) build $(GOTAGS) -ldflags "$(LDFLAGS)" -o bin/ibcm ./cli/ibcm
	$(GO) build $(GOTAGS) -ldflags "$(LDFLAGS)" -o bin/ibcm-client ./cli/ibcm-client

console-assets: ## rebuild the web console's committed console/web/dist (needs node 20 and npm; make build does not)
	cd console/web && npm ci && npm run build

man: build ## write the man pages of both command trees to man/ (man -l man/ibcm.1)
	./bin/ibcm man man
	./bin/ibcm-client man man

run: build ## run a whole site (CA + MP) on the embedded store in .run/site (made on first run)
	@test -f $(RUNDIR)/site.yaml || ./bin/ibcm site init --dir $(RUNDIR) --site-code RUN \
		--intranet-name ibcm.localtest --internet-name ibcm.example.test \
		--ca-addr 127.0.0.1:8443 --ca-public-addr 127.0.0.1:8080
	./bin/ibcm site up --dir $(RUNDIR)

test: deps ## everything: unit, store tests on SQLite and PostgreSQL, integration with real binaries
	$(GO) test $(GOTAGS) -count=1 -timeout 15m ./...

unit: ## the fast tests only (no integration/)
	$(GO) test $(GOTAGS) -count=1 $$($(GO) list ./... | grep -v /integration)

integration: deps ## end-to-end: real binaries, openssl, curl, PostgreSQL
	$(GO) test $(GOTAGS) -count=1 -timeout 10m -v ./integration/

check: fmt vet test ## gofmt, go vet, then every test

fmt: ## fail when gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet: ## go vet
	$(GO) vet $(GOTAGS) ./...

bench: deps ## benchmarks, printed as tables beside their references (BENCH_JSON=f.json to save)
	@./.ci/deps bench
	$(GO) run $(GOTAGS) ./bench $(if $(BENCH_JSON),-json $(BENCH_JSON))

fuzz: ## run every fuzz target for FUZZTIME (default 20s) each
	@for pkg in $$($(GO) list $(GOTAGS) ./...); do \
	  for f in $$($(GO) test $(GOTAGS) -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test $(GOTAGS) -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-20s} $$pkg || exit 1; \
	  done; done

deps: ## install what the tests need (postgresql, bind9, openssl, curl, tmux, Xvfb, x11vnc, …) when missing; needs root
	@./.ci/deps

clean: ## remove build output, man pages and the make-run site
	rm -rf bin man .run
