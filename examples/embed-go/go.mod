module blueprint.example/embed

go 1.19
