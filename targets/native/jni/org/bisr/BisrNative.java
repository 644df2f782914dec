package org.bisr;

/**
 * BiSRNet reconstruction through libbisr_native (targets/native), for Android apps and other JVM programs.
 *
 * <p>{@code new BisrNative(dir)} verifies and loads a bisr-deploy artifact directory; {@code reconstruct}
 * takes the snapshot H x (W+54) and, for simulation-mode artifacts, the mask H x W, both row-major, and
 * returns the cube 28 x H x W row-major. Errors are IllegalStateException with the loader's message.
 * The shared libraries libtvm_ffi, libtvm_runtime, libbisr_native and libbisr_jni must be on the library
 * path (an APK's lib/arm64-v8a/).
 *
 * <p>Thread-safe: any number of threads may call {@code reconstruct} on one instance; the calls take turns
 * (each already uses TVM's thread pool) and give the serial results. {@code close} waits for a running call.
 */
public final class BisrNative implements AutoCloseable {
    static {
        System.loadLibrary("tvm_ffi");
        System.loadLibrary("tvm_runtime");
        System.loadLibrary("bisr_native");
        System.loadLibrary("bisr_jni");
    }

    private long handle;

    public BisrNative(String artifactDir) {
        handle = open(artifactDir);
    }

    public synchronized float[] reconstruct(float[] measurement, float[] mask) {
        if (handle == 0) throw new IllegalStateException("closed");
        return run(handle, measurement, mask);
    }

    @Override
    public synchronized void close() {
        if (handle != 0) close(handle);
        handle = 0;
    }

    private static native long open(String dir);

    private static native float[] run(long handle, float[] measurement, float[] mask);

    private static native void close(long handle);
}
