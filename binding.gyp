{
  # The canonical build (npm install, prebuildify). CMakeLists.txt builds the same sources, read
  # from native/sources.txt by scripts/native-config.mjs, for sanitizer and debug builds.
  "targets": [
    {
      "target_name": "kvtier",
      "variables": {
        "kvtier_liburing": "<!(node scripts/native-config.mjs liburing)",
        "kvtier_liburing_lib": "<!(node scripts/native-config.mjs liburing-lib)",
        "kvtier_version": "<!(node scripts/native-config.mjs version)"
      },
      "sources": ["<!@(node scripts/native-config.mjs sources)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "KVTIER_VERSION=\"<(kvtier_version)\""
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=c++17"],
      "cflags": ["-Wall", "-Wextra", "-fvisibility=hidden", "-ffp-contract=off"],
      "cflags_cc": ["-std=c++20", "-fexceptions", "-Wno-missing-field-initializers"],
      "libraries": ["-ldl", "-lpthread"],
      "conditions": [
        ["kvtier_liburing==1", {
          "defines": ["KVTIER_HAVE_LIBURING"],
          "libraries": ["<(kvtier_liburing_lib)"]
        }]
      ]
    }
  ]
}
