"""The engine, Ray-free: settings, records, imaging, planning, indexing, embedding, stores."""
