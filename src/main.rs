use clap::Parser;

/// The pipeline allocates on one stage's thread and frees on the next;
/// glibc's per-arena locking made malloc and free a quarter of the import
/// profile. mimalloc's thread-free lists are built for that pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    op_dbus::cli::main_with(op_dbus::cli::Cli::parse())
}
