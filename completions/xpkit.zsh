#compdef xpkit

_xpkit_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _XPKIT_COMPLETE=complete_zsh xpkit)
}

compdef _xpkit_completion xpkit
