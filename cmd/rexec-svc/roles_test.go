package main

import (
	"slices"
	"testing"
)

func TestParseRoles(t *testing.T) {
	t.Parallel()
	got, err := parseRoles("submitter, auditor")
	if err != nil || !slices.Equal(got, []string{"submitter", "auditor"}) {
		t.Errorf("parseRoles = %v, %v", got, err)
	}
	if _, err := parseRoles("submitter,root"); err == nil {
		t.Error("unknown role accepted")
	}
	if !sameRoles([]string{"a", "b", "b"}, []string{"b", "a"}) || sameRoles([]string{"a"}, []string{"a", "b"}) {
		t.Error("sameRoles compares sets wrongly")
	}
}
