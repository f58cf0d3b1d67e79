side {{.Doc.title}}
