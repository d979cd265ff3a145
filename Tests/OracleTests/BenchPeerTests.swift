import SDDiTBench
import Testing

// `oracle bench --peer` reads the peer's result lines for both allocators: a line it misreads
// would put a default-malloc median beside the tuned ratio (or drop it) without a word.
@Suite("oracle bench: the PyTorch peer's lines")
struct BenchPeerTests {
    @Test func readsCaseAllocatorAndMedian() {
        let tuned = BenchRunner.parsePeerLine(
            "(i)   SD-DiT-S/2 train step, f32, B=8, mask 0.2 [tuned malloc]: median 5909 ms, runs [5909, 5585, 5953], cpu/run user 10.4 s sys 0.9 s")
        #expect(tuned?.0 == "i" && tuned?.1 == "tuned" && tuned?.2 == 5909)
        let plain = BenchRunner.parsePeerLine(
            "(iii) SD-DiT-S/2 D(x;sigma), f32, B=8, no grad [default malloc]: median 1565 ms, runs [1570, 1516, 1565], cpu/run user 2.9 s sys 0.2 s")
        #expect(plain?.0 == "iii" && plain?.1 == "default" && plain?.2 == 1565)
        let f64 = BenchRunner.parsePeerLine("(iv)  SD-DiT-S/2 train step, f64, B=8, mask 0.2 [tuned malloc]: median 14210 ms, runs [14210]")
        #expect(f64?.0 == "iv" && f64?.1 == "tuned" && f64?.2 == 14210)
        // the table rows and other lines are not results
        #expect(BenchRunner.parsePeerLine("| (i)   SD-DiT-S/2 train step, f32, B=8, mask 0.2 | tuned | 5909 | 5585 |") == nil)
        #expect(BenchRunner.parsePeerLine("torch 2.15.0+cu132, 2 threads, 2 cpus") == nil)
        #expect(BenchRunner.parsePeerLine("(v) something [tuned malloc]: median 1 ms") == nil)
    }
}
