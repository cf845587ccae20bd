package main

import (
	"fmt"
	"os"

	"github.com/idemproxy/idemproxy/processor"
)

// readErrorTemplate reads and checks --error-template-file, so a broken
// template stops the start instead of the first error's answer.
func readErrorTemplate(path string) (*processor.ErrorTemplate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--error-template-file: %w", err)
	}
	tmpl, err := processor.ParseErrorTemplate(b)
	if err != nil {
		return nil, fmt.Errorf("--error-template-file %s: %w", path, err)
	}
	return tmpl, nil
}
