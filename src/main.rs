use clap::Parser;

fn main() -> std::process::ExitCode {
    op_dbus::cli::main_with(op_dbus::cli::Cli::parse())
}
