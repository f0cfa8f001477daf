defmodule Krait.TensorTest do
  use ExUnit.Case, async: true
  doctest Krait.Tensor

  alias Krait.Tensor

  # np.arange(6, dtype=np.float32).reshape(2, 3) saved with np.save (numpy 2.x)
  @npy_2x3_f32 <<0x93, "NUMPY", 1, 0, 118, 0,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" <>
                   String.duplicate(" ", 58) <> "\n", 0.0::float-32-little, 1.0::float-32-little,
                 2.0::float-32-little, 3.0::float-32-little, 4.0::float-32-little,
                 5.0::float-32-little>>

  test "parses a .npy document without copying the data" do
    assert {:ok, %Tensor{dtype: :float32, shape: {2, 3}, byte_order: :little} = t} =
             Tensor.from_npy(@npy_2x3_f32)

    assert Tensor.to_list(t) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert byte_size(t.data) == 24
    assert Tensor.element_count(t) == 6
  end

  test "round-trips through .npy for every numeric dtype" do
    for {dtype, values} <- [
          bool: [true, false],
          int8: [-1, 2],
          int16: [-300, 7],
          int32: [-70_000, 1],
          int64: [-(2 ** 40), 3],
          uint8: [255, 0],
          uint16: [65_535, 1],
          uint32: [4_000_000_000, 2],
          uint64: [2 ** 63, 5],
          float32: [1.5, -2.25],
          float64: [1.0e300, -0.5]
        ] do
      t = Tensor.from_list(values, dtype)
      npy = IO.iodata_to_binary(Tensor.to_npy(t))
      # the data starts on a 64-byte boundary
      assert rem(byte_size(npy) - byte_size(t.data), 64) == 0
      assert {:ok, back} = Tensor.from_npy(npy)
      assert back.dtype == dtype and back.shape == {2}
      assert Tensor.to_list(back) == values
    end
  end

  test "shapes: scalars, 1-d and n-d" do
    for shape <- [{}, {3}, {2, 1, 2}] do
      n = shape |> Tuple.to_list() |> Enum.product()
      t = Tensor.new(:binary.copy(<<0, 0, 0, 0, 0, 0, 0, 0>>, n), :float64, shape)
      {:ok, back} = t |> Tensor.to_npy() |> IO.iodata_to_binary() |> Tensor.from_npy()
      assert back.shape == shape
    end
  end

  test "big-endian data and unknown dtypes" do
    header = "{'descr': '>i4', 'fortran_order': True, 'shape': (2,), }"

    npy =
      <<0x93, "NUMPY", 1, 0, byte_size(header)::little-16, header::binary, 1::big-32,
        -2::signed-big-32>>

    assert {:ok, %Tensor{dtype: :int32, byte_order: :big, fortran_order: true} = t} =
             Tensor.from_npy(npy)

    assert Tensor.to_list(t) == [1, -2]

    header = "{'descr': '<U2', 'fortran_order': False, 'shape': (1,), }"

    npy =
      <<0x93, "NUMPY", 1, 0, byte_size(header)::little-16, header::binary, "a", 0, 0, 0, "b", 0,
        0, 0>>

    assert {:ok, %Tensor{dtype: "<U2", shape: {1}, data: <<"a", 0, 0, 0, "b", 0, 0, 0>>}} =
             Tensor.from_npy(npy)
  end

  test "rejects what is not .npy, or too short" do
    assert {:error, _} = Tensor.from_npy("hello")

    assert {:error, _} =
             Tensor.from_npy(binary_part(@npy_2x3_f32, 0, byte_size(@npy_2x3_f32) - 1))

    assert_raise ArgumentError, fn -> Tensor.new(<<1, 2, 3>>, :float32, {1}) end
  end

  test "Nx types" do
    assert Tensor.nx_type(:float32) == {:f, 32}
    assert Tensor.nx_type(:int64) == {:s, 64}
    assert Tensor.nx_type(%Tensor{dtype: :bool}) == {:u, 8}
  end
end
