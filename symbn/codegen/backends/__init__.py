"""One printer per backend: each turns the plan into the statements its template lays out."""
