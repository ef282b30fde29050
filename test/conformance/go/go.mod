module k8s-athenz-identity/test/conformance/go

go 1.23.0

require (
	github.com/AthenZ/athenz v1.12.13
	github.com/ardielle/ardielle-go v1.5.2
)

require github.com/google/shlex v0.0.0-20191202100458-e7afc7fbc510 // indirect
