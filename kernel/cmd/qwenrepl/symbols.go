package main

import "reflect"

// Symbols holds interpreter symbol tables generated here: symbols_cli.go
// exports kernel/cli, so scripts can import the flag helper. They are
// given to the session with session.Options.Symbols.
var Symbols = map[string]map[string]reflect.Value{}

//go:generate sh -c "go run github.com/traefik/yaegi/cmd/yaegi extract -name main github.com/qwengo/qwengo/kernel/cli && mv github_com-qwengo-qwengo-kernel-cli.go symbols_cli.go"
